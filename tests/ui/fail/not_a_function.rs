use distlock::distributed_lock;

#[distributed_lock(key = "ranking")]
struct Ranking;

fn main() {
    let _ = Ranking;
}
