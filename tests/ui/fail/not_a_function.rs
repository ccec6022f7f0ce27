use distributed_lock::distributed_lock;

#[distributed_lock(key = "ranking")]
struct Ranking;

fn main() {
    let _ = Ranking;
}
