//! The `#[distributed_lock]` attribute of the `distlock` crate.
//!
//! Use it through the facade (`use distlock::distributed_lock;`): the code it generates calls
//! the facade's runtime, so this crate alone is not enough.
#![warn(missing_docs)]

// This file is only the entry point: parse the arguments (`args`), check them against the fn and
// rewrite it (`expand`). Duration literals live in `duration`, key templates in `key`.

mod args;
mod duration;
mod expand;
mod facade;
mod key;

use proc_macro::TokenStream;

/// Runs an `async fn` under a distributed lock: acquire before the body, release after it.
///
/// ```
/// use distlock::{LockError, Locker, distributed_lock};
///
/// #[derive(Debug)]
/// enum AppError {
///     Lock(LockError),
/// }
///
/// // What the attribute needs of the error type: busy, a lost lease and a backend failure
/// // arrive as a `LockError`.
/// impl From<LockError> for AppError {
///     fn from(e: LockError) -> Self {
///         AppError::Lock(e)
///     }
/// }
///
/// struct Library {
///     locks: Locker,
/// }
///
/// impl Library {
///     #[distributed_lock(key = "book:{isbn}", wait = "10s", lease = "5s", locker = self.locks)]
///     async fn register(&self, isbn: &str) -> Result<String, AppError> {
///         // Runs while this process holds "book:<isbn>": check, then insert.
///         Ok(format!("registered {isbn}"))
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), AppError> {
///     // `Locker::connect("redis://127.0.0.1:6379").await?` for Redis; in memory here, so the
///     // example runs as it is.
///     let library = Library { locks: Locker::in_memory() };
///     assert_eq!(library.register("978-0134685991").await?, "registered 978-0134685991");
///     Ok(())
/// }
/// ```
///
/// Arguments, in any order:
/// - `key = "..."` (required): a template built once, before acquiring. `{isbn}` inserts a
///   parameter by `Display`, `{req.item_id}` a field of a parameter, `{self.id}` a field of the
///   receiver; `{{` and `}}` are literal braces.
/// - `wait = "10s"`: how long to wait for the lock (default 10 s; `"0s"` tries once).
/// - `lease = "30s"`: a fixed lease. Without it a watchdog renews the lease while the body runs.
/// - `hold_at_least = "1m"`: keep the lock at least this long after it was taken, even when the
///   body ends sooner, so a scheduled job does not run again on another machine whose clock is
///   slightly behind (ShedLock's lockAtLeastFor). Must not exceed a literal `lease`.
/// - `on_busy = "error" | "skip"`: `"error"` (default) returns `Err(LockError::NotAcquired)`
///   converted with `From`, so the fn returns `Result<T, E>` with `E: From<LockError>` (an
///   alias works too: `anyhow::Result<T>`, `std::io::Result<T>`, your `AppResult<T>`).
///   `"skip"` returns without running the body: `()`, `None`, `Ok(())` or `Ok(None)` for a fn
///   returning `()`, `Option<T>`, `Result<(), E>` or `Result<Option<T>, E>`. Any other failure
///   (the backend, a lost lease) is an `Err` in the `Result` shapes; `()` and `Option<T>` have
///   no place for it, so it is logged at ERROR.
/// - `on_lost = "report" | "cancel"`: when the lease is lost during the body, `"report"`
///   (default) lets the body finish, `"cancel"` drops it at once; both then return
///   `Err(LockError::LeaseLost)` (logged instead for a skip-mode fn returning `()`/`Option<T>`).
/// - `locker = <expr>`: the `Locker` to use (`Locker`, `&Locker`, `Arc<Locker>`), e.g.
///   `locker = self.locks`. Default: the installed default locker.
/// - `crate = "path"`: where `distlock` is, for crates that re-export it. Without it the
///   generated code finds `distlock` under the name the calling crate's `Cargo.toml` gives it
///   (e.g. `lock = { package = "distlock", ... }`).
///
/// Durations are string literals checked at compile time (units `ms`, `s`, `m`, `h`, `d`, largest
/// first: `"1m30s"`; at most a year, the runtime's `MAX_DURATION`) or any expression of type
/// `Duration`, such as a `const`.
///
/// Whether the return type fits `on_busy` is decided by the type system, not by how the type is
/// spelled; a misfit is a compile error at the return type that says what would fit.
///
/// # With `#[async_trait]`
///
/// On a method of an `#[async_trait]` impl or trait, write the attribute on the method as usual.
/// `#[async_trait]` sits on the enclosing item, so it always expands first and turns the
/// `async fn` into a fn returning `Box::pin(async move { .. })`; the attribute recognises that
/// shape (as `#[tracing::instrument]` does) and locks inside the future.
///
/// # With `#[tracing::instrument]`
///
/// Attributes expand from the first one written to the last, each wrapping what the next one
/// sees. To have the lock's events ("lock acquired", "lock released", ...) inside the fn's span,
/// write `#[distributed_lock(..)]` above `#[tracing::instrument]`. With `#[tracing::instrument]`
/// first, its span covers only the body: the key, the wait and the acquire happen before it is
/// entered, the release after it is left. The same holds on `#[async_trait]` methods.
///
/// The signature, attributes, docs and visibility stay as written; the body becomes an
/// `async move` block awaited in place, so `return`, `?`, `self`, generics and lifetimes keep
/// their meaning. The lock is released when the body's future completes, also on early return,
/// error, panic, or when the caller drops the future.
#[proc_macro_attribute]
pub fn distributed_lock(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let args = syn::parse::<args::Args>(attr);
    let function = syn::parse2::<syn::ItemFn>(item.clone()).map_err(|_| {
        syn::Error::new(
            proc_macro2::Span::call_site(),
            "`#[distributed_lock]` goes on an `async fn` with a body (a free fn, a method, or \
             an `async fn` in a trait impl)",
        )
    });
    let expanded = match (args, function) {
        (Ok(args), Ok(function)) => expand::expand(args, function),
        (Err(mut first), Err(second)) => {
            first.combine(second);
            Err(first)
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        // As tokio's macros do: keep the user's item, so one clear error is all they see and
        // the IDE still knows their fn.
        Err(error) => {
            let mut tokens = item;
            tokens.extend(error.into_compile_error());
            tokens.into()
        }
    }
}
