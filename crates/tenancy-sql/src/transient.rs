//! Telling a passing outage from a failed statement: an error that means the connection or
//! the server went away, or no connection could be had, is worth retrying later (an HTTP
//! service answers 503); any other error is the statement's own.

/// Whether `error` is transient: no connection could be had (pool timed out or closed), the
/// connection broke (I/O, TLS, the driver's worker died), or the server ended the session or
/// refused it (SQLSTATE class `08` connection exception, `57P01`–`57P03` shutdown, crash or
/// not yet accepting connections, `53300` too many connections).
///
/// ```
/// assert!(tenancy_sql::is_transient(&sqlx::Error::PoolTimedOut));
/// assert!(!tenancy_sql::is_transient(&sqlx::Error::RowNotFound));
/// ```
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}
