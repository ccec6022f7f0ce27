// Field paths, tuple indices, destructured parameters and literal braces in keys.
use distlock::{LockError, Locker, current, distributed_lock, install};

struct User {
    id: u64,
}

struct Request {
    item_id: String,
    user: User,
}

struct Pair(u32, &'static str);

#[distributed_lock(key = "{{cart}}:{req.user.id}:{req.item_id}:{pair.0}:{pair.1}")]
async fn add_to_cart(req: &Request, pair: Pair) -> Result<String, LockError> {
    Ok(current().unwrap().key().to_owned())
}

#[distributed_lock(key = "cell:{row}x{col}")]
async fn cell((row, col): (u32, u32), mut note: String) -> Result<String, LockError> {
    note.push('!');
    Ok(format!("{}{note}", current().unwrap().key()))
}

#[tokio::main]
async fn main() {
    install(Locker::in_memory());
    let req = Request {
        item_id: "sku-9".into(),
        user: User { id: 4 },
    };
    let key = add_to_cart(&req, Pair(2, "eu")).await.unwrap();
    assert_eq!(key, "{cart}:4:sku-9:2:eu");
    assert_eq!(cell((1, 2), "n".into()).await.unwrap(), "cell:1x2n!");
}
