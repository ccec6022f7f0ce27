// `&self`, `&mut self` and `self` receivers, with `{self.field}` keys.
use distlock::{LockError, Locker, current, distributed_lock, install};

struct Account {
    id: u64,
    balance: i64,
}

impl Account {
    #[distributed_lock(key = "account:{self.id}")]
    async fn balance(&self) -> Result<i64, LockError> {
        assert_eq!(current().unwrap().key(), "account:1");
        Ok(self.balance)
    }

    #[distributed_lock(key = "account:{self.id}")]
    async fn deposit(&mut self, amount: i64) -> Result<i64, LockError> {
        self.balance += amount;
        Ok(self.balance)
    }

    #[distributed_lock(key = "account:{self.id}:close")]
    async fn close(self) -> Result<i64, LockError> {
        Ok(self.balance)
    }

    #[distributed_lock(key = "account:{id}")]
    async fn open(id: u64) -> Result<Self, LockError> {
        Ok(Self { id, balance: 0 })
    }
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    let mut account = Account::open(1).await.unwrap();
    assert_eq!(account.deposit(5).await.unwrap(), 5);
    assert_eq!(account.balance().await.unwrap(), 5);
    assert_eq!(account.close().await.unwrap(), 5);
}
