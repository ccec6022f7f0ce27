use distlock::distributed_lock;

#[distributed_lock(key = "ranking")]
async fn rebuild_ranking() {}

fn main() {
    let _ = rebuild_ranking();
}
