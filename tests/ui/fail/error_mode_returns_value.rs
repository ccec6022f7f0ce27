use distlock::distributed_lock;

#[distributed_lock(key = "counter:{name}", on_busy = "error")]
async fn next_value(name: &str) -> u64 {
    name.len() as u64
}

fn main() {
    let _ = next_value("orders");
}
