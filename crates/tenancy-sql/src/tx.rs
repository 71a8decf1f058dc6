//! The tenant-scoped connection and transaction every backend hands out: [`TenantConnection`]
//! (a pooled connection on loan to one tenant) and [`TenantTx`] (a transaction on it that never
//! goes back to the pool open or carrying tenant state).

use std::fmt;
use std::ops::{Deref, DerefMut};

use sqlx::database::HasStatementCache;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, SqlStr};
// sqlx does not re-export the trait behind `Database::TransactionManager`.
use sqlx_core::transaction::TransactionManager;
use tenancy_core::{IsolationMode, TenantIdentifier};

use crate::database_per_tenant::ConnectionPermits;
#[cfg(feature = "postgres")]
use crate::isolation::TenantSlot;
use crate::isolation_error::{IsolationError, connection_error};

/// A pooled connection on loan to one tenant: a connection to the tenant's own database
/// (database-per-tenant, paid for by a permit of the global connection budget while it is
/// open) or to the shared database (schema/RLS isolation, scoped by the [`TenantTx`] opened
/// on it).
///
/// Derefs to the driver connection, so it runs queries as `&mut *conn`. Dropping it returns the
/// connection to its pool (database-per-tenant: or closes it, when other callers wait for the
/// budget and its pool has another connection open).
pub struct TenantConnection<DB: Database> {
    /// Always `Some` until the drop hands it back.
    conn: Option<PoolConnection<DB>>,
    tenant: TenantIdentifier,
    permits: Option<ConnectionPermits<DB>>,
    /// The tenant's concurrency slot on a shared pool; declared after `conn`, so it is given
    /// back once the connection is on its way back to the pool.
    #[cfg(feature = "postgres")]
    slot: Option<TenantSlot>,
}

impl<DB: Database> TenantConnection<DB> {
    pub(crate) fn new(
        conn: PoolConnection<DB>,
        tenant: TenantIdentifier,
        permits: Option<ConnectionPermits<DB>>,
    ) -> Self {
        Self {
            conn: Some(conn),
            tenant,
            permits,
            #[cfg(feature = "postgres")]
            slot: None,
        }
    }

    /// Holds `slot` (a tenant's concurrency slot) until the connection is dropped.
    #[cfg(feature = "postgres")]
    pub(crate) fn holding(mut self, slot: Option<TenantSlot>) -> Self {
        self.slot = slot;
        self
    }

    /// The tenant the connection is on loan to.
    pub fn tenant(&self) -> &TenantIdentifier {
        &self.tenant
    }

    /// Closes the connection when dropped instead of returning it to the pool.
    pub fn close_on_drop(&mut self) {
        self.pooled_mut().close_on_drop();
    }

    fn pooled_mut(&mut self) -> &mut PoolConnection<DB> {
        self.conn.as_mut().expect(HANDED_BACK)
    }
}

/// The one way `TenantConnection::conn` is `None`: inside its drop.
const HANDED_BACK: &str = "a tenant connection is handed back only when dropped";

impl<DB: Database> Drop for TenantConnection<DB> {
    fn drop(&mut self) {
        if let (Some(permits), Some(conn)) = (self.permits.take(), self.conn.take()) {
            permits.release(conn);
        }
    }
}

impl<DB: Database> Deref for TenantConnection<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn.as_ref().expect(HANDED_BACK)
    }
}

impl<DB: Database> DerefMut for TenantConnection<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.pooled_mut()
    }
}

impl<DB: Database> fmt::Debug for TenantConnection<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConnection")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Where a [`TenantTx`] is; decides what a drop does with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    /// `BEGIN` (with the tenant scope) in flight or failed: the server's state is unknown.
    Starting,
    /// The transaction is open.
    Open,
    /// `COMMIT` or `ROLLBACK` in flight or failed: the server's state is unknown.
    Ending,
    /// The transaction ended cleanly.
    Ended,
}

/// A transaction scoped to one tenant: its schema or its rows (PostgreSQL schema and RLS
/// isolation), or its own database (database-per-tenant, any backend).
///
/// Derefs to the driver connection, so queries run on it as on a sqlx transaction:
/// `sqlx::query("..").fetch_all(&mut *tx)`. End it with [`commit`](Self::commit); dropping it
/// rolls back. A nested `Connection::begin(&mut *tx)` opens a savepoint; ending the tenant
/// transaction while one is still open fails with [`IsolationError::SavepointOpen`] and closes
/// the connection. With feature `axum` it is also an axum extractor: a handler taking a
/// `TenantTx<DB>` argument gets a transaction scoped to the request's tenant.
///
/// # Scope
/// The begin statement carries the scope. PostgreSQL schema and RLS isolation send
/// `BEGIN; SET LOCAL search_path TO ..; SET LOCAL <setting> TO '<tenant>'; SET LOCAL
/// statement_timeout TO <ms or DEFAULT>` as one simple-query message, all transaction-local so
/// `COMMIT`/`ROLLBACK` restores the session, and overriding whatever session-level values a
/// previous borrower left.
/// Database-per-tenant sends `BEGIN` (or e.g. SQLite's `BEGIN IMMEDIATE`) on a connection to
/// the tenant's own database.
///
/// A transaction on a shared pool with a per-tenant concurrency limit holds one of its
/// tenant's slots until it is dropped (after commit or rollback, when it is dropped).
///
/// # Leak-proofing
/// The connection never returns to the pool inside the transaction: a drop while the
/// transaction is open queues `ROLLBACK` (no round trip), which sqlx sends before anything else
/// on the connection, including the pool's release check; a drop while `BEGIN`, `COMMIT` or
/// `ROLLBACK` is in flight or after it failed (a cancelled future, a panic, an error) closes the
/// connection instead, since nobody knows the server's state. Panics unwind through the same
/// drop. Do not send `COMMIT`/`ROLLBACK` as SQL yourself: the statements after it would run
/// outside the tenant scope.
///
/// # Round trips (PostgreSQL schema/RLS)
/// On the request path:
/// - checkout: 0 (the pool is built without `test_before_acquire`)
/// - `BEGIN` + scope: 1
/// - each query: 1 (plus 1 for preparing a statement the connection has not cached)
/// - `COMMIT`: 1; `ROLLBACK` by drop: 0 (queued)
///
/// After the connection is handed back, while the pool still holds it: sqlx's release ping (1,
/// which also carries a queued `ROLLBACK`), plus 1 for the release reset when
/// `PgIsolationOptions::reset_on_release` is on (and then a queued `ROLLBACK` goes alone
/// first: 1 more). A read-only handler that ends
/// by drop on a pool without the reset costs 3 in all, against 2 for an autocommit query on a
/// plain pool (the query and the release ping).
///
/// The scope cannot ride in the same write as the first query: sqlx's public API waits for each
/// message's reply before sending the next, so pipelining would need a change in the driver.
/// `scripts/bench-protocol` measures with pgbench what pipelining would buy on a server.
pub struct TenantTx<DB: Database> {
    conn: TenantConnection<DB>,
    mode: IsolationMode,
    begin_statement: Option<SqlStr>,
    state: TxState,
}

impl<DB: Database> TenantTx<DB> {
    /// Begins a transaction on `conn` with `begin_statement` (sqlx's `BEGIN` if `None`), which
    /// is kept for [`restart_with_fresh_statements`](Self::restart_with_fresh_statements).
    pub(crate) async fn begin(
        conn: TenantConnection<DB>,
        mode: IsolationMode,
        begin_statement: Option<SqlStr>,
    ) -> Result<Self, IsolationError> {
        let mut tx = Self {
            conn,
            mode,
            begin_statement,
            state: TxState::Starting,
        };
        DB::TransactionManager::begin(&mut tx.conn, tx.begin_statement.clone())
            .await
            .map_err(connection_error)?;
        tx.state = TxState::Open;
        Ok(tx)
    }

    /// The tenant this transaction is scoped to.
    pub fn tenant(&self) -> &TenantIdentifier {
        self.conn.tenant()
    }

    /// How it is scoped: `schema`, `rls` or `database`.
    pub fn mode(&self) -> IsolationMode {
        self.mode
    }

    /// Commits the transaction and gives the connection back to its pool.
    ///
    /// Like sqlx's `Transaction::commit`, committing a PostgreSQL transaction in which a
    /// statement failed rolls it back without an error.
    pub async fn commit(mut self) -> Result<(), IsolationError> {
        self.end_transaction()?;
        DB::TransactionManager::commit(&mut self.conn).await?;
        self.state = TxState::Ended;
        Ok(())
    }

    /// Rolls the transaction back and gives the connection back to its pool.
    pub async fn rollback(mut self) -> Result<(), IsolationError> {
        self.end_transaction()?;
        DB::TransactionManager::rollback(&mut self.conn).await?;
        self.state = TxState::Ended;
        Ok(())
    }

    /// Marks the transaction as ending (a drop from here on closes the connection) and checks
    /// that no savepoint opened on it is still alive.
    fn end_transaction(&mut self) -> Result<(), IsolationError> {
        self.state = TxState::Ending;
        match DB::TransactionManager::get_transaction_depth(&self.conn) {
            1 => Ok(()),
            depth => Err(IsolationError::SavepointOpen {
                savepoints: depth.saturating_sub(1),
            }),
        }
    }
}

impl<DB: Database + HasStatementCache> TenantTx<DB> {
    /// Recovers from a statement prepared against tables of another shape (on PostgreSQL,
    /// `tenancy_sql::postgres::is_stale_plan_error`): rolls back, clears the
    /// connection's statement cache so statements are prepared again, and begins again with the
    /// same statement and scope (3 round trips). Work done so far in this transaction is lost;
    /// run it again.
    pub async fn restart_with_fresh_statements(&mut self) -> Result<(), IsolationError> {
        self.end_transaction()?;
        DB::TransactionManager::rollback(&mut self.conn).await?;
        self.conn.clear_cached_statements().await?;
        self.state = TxState::Starting;
        DB::TransactionManager::begin(&mut self.conn, self.begin_statement.clone())
            .await
            .map_err(connection_error)?;
        self.state = TxState::Open;
        Ok(())
    }
}

impl<DB: Database> Drop for TenantTx<DB> {
    fn drop(&mut self) {
        let depth = DB::TransactionManager::get_transaction_depth(&self.conn);
        match (self.state, depth) {
            (TxState::Ended, 0) => {}
            (TxState::Open, 1) => DB::TransactionManager::start_rollback(&mut self.conn),
            _ => self.conn.close_on_drop(),
        }
    }
}

impl<DB: Database> Deref for TenantTx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> DerefMut for TenantTx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> AsMut<DB::Connection> for TenantTx<DB> {
    fn as_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> fmt::Debug for TenantTx<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", self.tenant())
            .field("mode", &self.mode)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
