//! The table prefix (Casdoor's `tableNamePrefix`) the migrations run with.
//!
//! sea-orm-migration asks the migrator for its migrations and its bookkeeping table through
//! associated functions, which take no arguments; the prefix reaches them through
//! [`with_table_prefix`], which holds it for one future only. Unlike a process-wide setting, two
//! databases with two prefixes can be migrated at the same time in one process.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sea_orm_migration::prelude::{Alias, DynIden, IntoIden};

thread_local! {
    /// The prefix of the future being polled on this thread, if it runs under a prefix.
    static CURRENT: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `future` with `prefix` as the table prefix of every migration step it takes.
pub async fn with_table_prefix<F: Future>(prefix: &str, future: F) -> F::Output {
    Scoped {
        prefix: Arc::from(prefix),
        inner: Box::pin(future),
    }
    .await
}

/// The prefix of the running migration step (empty outside [`with_table_prefix`]).
pub fn table_prefix() -> String {
    CURRENT.with(|c| c.borrow().as_deref().map(str::to_owned).unwrap_or_default())
}

/// `name` with the running prefix in front: a table or index name of the current database.
pub fn prefixed(name: &str) -> String {
    format!("{}{name}", table_prefix())
}

/// [`prefixed`] as an identifier.
pub fn prefixed_iden(name: impl IntoIden) -> DynIden {
    Alias::new(prefixed(&name.into_iden().to_string())).into_iden()
}

struct Scoped<F: Future> {
    prefix: Arc<str>,
    inner: Pin<Box<F>>,
}

/// Puts the previous prefix back when a poll ends, also when it panics.
struct Restore(Option<Arc<str>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Scoped` is `Unpin`: its future is boxed.
        let this = self.get_mut();
        let previous = CURRENT.with(|c| c.replace(Some(this.prefix.clone())));
        let _restore = Restore(previous);
        this.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut future = Box::pin(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    #[test]
    fn the_prefix_holds_inside_the_scope_only() {
        assert_eq!(table_prefix(), "");
        let inside = block_on(with_table_prefix("cd_", async {
            let outer = prefixed("user");
            let nested = with_table_prefix("x_", async { prefixed("user") }).await;
            (outer, nested, prefixed("user"))
        }));
        assert_eq!(
            inside,
            ("cd_user".into(), "x_user".into(), "cd_user".into())
        );
        assert_eq!(table_prefix(), "");
    }
}
