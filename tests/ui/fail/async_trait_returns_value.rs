use async_trait::async_trait;
use distlock::distributed_lock;

#[async_trait]
trait Counter {
    async fn next(&self) -> u64;
}

struct Orders;

#[async_trait]
impl Counter for Orders {
    #[distributed_lock(key = "orders")]
    async fn next(&self) -> u64 {
        1
    }
}

fn main() {
    let _ = Orders.next();
}
