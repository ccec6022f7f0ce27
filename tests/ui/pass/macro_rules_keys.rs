// Key templates in fns that a `macro_rules!` defines: the key literal and the parameters it
// names may come from different macro contexts (hygiene), and still find each other.
use distlock::{LockError, Locker, current, distributed_lock, install};

// The key from the caller, the parameter from the macro.
macro_rules! job_with_key {
    ($name:ident, $key:literal) => {
        #[distributed_lock(key = $key)]
        async fn $name(id: u32) -> Result<String, LockError> {
            Ok(format!("{} ({id})", current().unwrap().key()))
        }
    };
}

job_with_key!(by_id, "job:{id}");

// The parameter from the caller, the key from the macro.
macro_rules! job_with_param {
    ($name:ident, $param:ident) => {
        #[distributed_lock(key = "task:{id}")]
        async fn $name($param: u32) -> Result<String, LockError> {
            Ok(current().unwrap().key().to_owned())
        }
    };
}

job_with_param!(by_task, id);

// A method: `{self.number}` from the caller, `&self` from the macro.
macro_rules! shelf {
    ($key:literal) => {
        struct Shelf {
            number: u32,
        }

        impl Shelf {
            #[distributed_lock(key = $key)]
            async fn sort(&self) -> Result<String, LockError> {
                Ok(current().unwrap().key().to_owned())
            }
        }
    };
}

shelf!("shelf:{self.number}");

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    assert_eq!(by_id(1).await.unwrap(), "job:1 (1)");
    assert_eq!(by_task(2).await.unwrap(), "task:2");
    assert_eq!(Shelf { number: 3 }.sort().await.unwrap(), "shelf:3");
}
