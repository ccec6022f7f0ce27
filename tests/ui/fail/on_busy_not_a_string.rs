use distlock::distributed_lock;

#[distributed_lock(key = "ranking", on_busy = skip)]
async fn rebuild_ranking() {}

fn main() {
    let _ = rebuild_ranking();
}
