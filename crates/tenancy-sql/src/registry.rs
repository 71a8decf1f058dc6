//! What the PostgreSQL, MariaDB/MySQL and SQLite registry stores share: the versioned
//! registry migrations and their ledger, the mapping of sqlx errors to [`StoreError`], the
//! preparation of a created tenant, and the decoding of a tenant row.
//!
//! Every store selects a tenant with the same column order ([`TenantColumn`]), texts where the
//! databases differ (id, metadata, domains joined by spaces), so one decoder serves all three.
//! MariaDB/MySQL and SQLite share the rest of their store too, in `positional`.

#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) mod positional;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use tenancy_core::{
    IsolationMode, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier,
    TenantStatus,
};

/// One versioned step of the registry schema, applied once and recorded in the ledger table
/// `tenancy_registry_migrations`.
#[derive(Debug)]
pub(crate) struct RegistryStep {
    /// Position in the ordered list; recorded in the ledger.
    pub(crate) version: i64,
    /// What the step does; recorded in the ledger.
    pub(crate) description: &'static str,
    /// The statements, run in order.
    pub(crate) statements: &'static [&'static str],
}

/// The steps of `steps` not yet in the ledger, in order.
///
/// A ledger holding a version this build does not know means a newer release migrated the
/// registry; running older code against it is refused.
pub(crate) fn pending_steps<'a>(
    steps: &'a [RegistryStep],
    applied: &[i64],
) -> Result<Vec<&'a RegistryStep>, StoreError> {
    let newest_known = steps.iter().map(|step| step.version).max().unwrap_or(0);
    if let Some(unknown) = applied.iter().find(|version| **version > newest_known) {
        return Err(StoreError::Corrupt(format!(
            "registry schema version {unknown} is newer than this build knows ({newest_known})"
        )));
    }
    Ok(steps
        .iter()
        .filter(|step| !applied.contains(&step.version))
        .collect())
}

/// Creates the ledger table (`create_ledger`) if it is missing, then applies the steps of
/// `steps` not yet in it on `conn`, recording each with `record_step` (binds: version,
/// description, time applied). The caller holds whatever lock serialises migrations.
pub(crate) async fn apply_pending_steps<DB>(
    conn: &mut DB::Connection,
    steps: &[RegistryStep],
    create_ledger: &'static str,
    record_step: &'static str,
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DateTime<Utc>: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::raw_sql(create_ledger)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM tenancy_registry_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    for step in pending_steps(steps, &applied)? {
        for statement in step.statements {
            sqlx::raw_sql(*statement)
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        sqlx::query(record_step)
            .bind(step.version)
            .bind(step.description)
            .bind(now())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// The tenant a create writes: `new` validated, its domains normalised, created and updated
/// now.
pub(crate) fn tenant_to_create(new: NewTenant) -> Result<Tenant, StoreError> {
    new.validate()?;
    let mut tenant = new.into_tenant();
    tenant.domains = normalized_domains(std::mem::take(&mut tenant.domains));
    tenant.created_at = now();
    tenant.updated_at = tenant.created_at;
    Ok(tenant)
}

/// The error of a failed tenant insert: a unique violation is
/// [`StoreError::AlreadyExists`] for `identifier`.
pub(crate) fn tenant_insert_error(error: sqlx::Error, identifier: &TenantIdentifier) -> StoreError {
    if is_unique_violation(&error) {
        StoreError::AlreadyExists(identifier.clone())
    } else {
        store_error(error)
    }
}

/// A counted number of tenants; a negative count is [`StoreError::Corrupt`].
pub(crate) fn tenant_count(count: i64) -> Result<u64, StoreError> {
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("negative count {count}")))
}

/// Maps a sqlx error: an unreadable value is [`StoreError::Corrupt`], anything else (network,
/// pool, timeout, server) is [`StoreError::Unavailable`].
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::unavailable(other),
    }
}

/// Whether `error` is the violation of a unique or primary key constraint.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|database| database.is_unique_violation())
}

/// The current time at the microsecond precision every registry database keeps, so a tenant
/// returned from a write equals the one read back later.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Domains as stored and returned: sorted, without duplicates.
pub(crate) fn normalized_domains(mut domains: Vec<String>) -> Vec<String> {
    domains.sort_unstable();
    domains.dedup();
    domains
}

/// The statuses a tenant may enter `status` from, padded to five by repeating the first, for
/// a fixed `status IN (?, ?, ?, ?, ?)` (one prepared statement for every target status).
pub(crate) fn predecessor_slots(status: TenantStatus) -> [&'static str; 5] {
    let predecessors = status.predecessors();
    std::array::from_fn(|slot| predecessors.get(slot).unwrap_or(&predecessors[0]).as_str())
}

/// Metadata as stored in a text or JSON column.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn metadata_text(metadata: &Metadata) -> String {
    serde_json::Value::Object(metadata.clone()).to_string()
}

/// Parses stored metadata; the error says why it is not a JSON object (wrap it in
/// [`StoreError::Corrupt`]).
pub(crate) fn parse_metadata(text: &str) -> Result<Metadata, String> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(metadata)) => Ok(metadata),
        Ok(_) => Err("metadata is not a JSON object".to_owned()),
        Err(error) => Err(format!("metadata is not JSON: {error}")),
    }
}

/// Parses a stored status; the error names the unknown value (wrap it in
/// [`StoreError::Corrupt`]).
pub(crate) fn parse_status(text: &str) -> Result<TenantStatus, String> {
    text.parse()
        .map_err(|error: tenancy_core::UnknownValue| error.to_string())
}

/// The column positions of a selected tenant, the same in every store's queries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TenantColumn {
    /// The id as text.
    Id,
    /// The identifier.
    Identifier,
    /// The display name.
    Name,
    /// The status as text.
    Status,
    /// The tier.
    Tier,
    /// The isolation override, if any.
    Isolation,
    /// The placement, if any.
    Placement,
    /// The metadata as JSON text.
    Metadata,
    /// The domains joined by single spaces, or NULL when there are none.
    Domains,
    /// When the tenant was created.
    CreatedAt,
    /// When the tenant last changed.
    UpdatedAt,
}

/// Decodes a tenant selected in [`TenantColumn`] order. Any unreadable value is
/// [`StoreError::Corrupt`].
pub(crate) fn tenant_from_row<'r, R>(row: &'r R) -> Result<Tenant, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let text = |column: TenantColumn| row.try_get::<String, _>(column as usize);
    let optional = |column: TenantColumn| row.try_get::<Option<String>, _>(column as usize);
    let identifier_text = text(TenantColumn::Identifier).map_err(store_error)?;
    let corrupt = |what: &str| {
        StoreError::Corrupt(format!(
            "tenant '{}': {what}",
            identifier_text.chars().take(64).collect::<String>()
        ))
    };
    let identifier = TenantIdentifier::parse(&identifier_text)
        .map_err(|error| corrupt(&format!("bad identifier: {error}")))?;
    let id = text(TenantColumn::Id)
        .map_err(store_error)?
        .parse()
        .map(TenantId)
        .map_err(|error| corrupt(&format!("bad id: {error}")))?;
    let status =
        parse_status(&text(TenantColumn::Status).map_err(store_error)?).map_err(|e| corrupt(&e))?;
    let isolation = optional(TenantColumn::Isolation)
        .map_err(store_error)?
        .map(|mode| mode.parse::<IsolationMode>())
        .transpose()
        .map_err(|error| corrupt(&error.to_string()))?;
    let metadata = parse_metadata(&text(TenantColumn::Metadata).map_err(store_error)?)
        .map_err(|e| corrupt(&e))?;
    let domains = optional(TenantColumn::Domains)
        .map_err(store_error)?
        .map(|joined| joined.split(' ').map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Tenant {
        id,
        identifier,
        name: text(TenantColumn::Name).map_err(store_error)?,
        status,
        tier: text(TenantColumn::Tier).map_err(store_error)?,
        isolation,
        placement: optional(TenantColumn::Placement).map_err(store_error)?,
        metadata,
        domains: normalized_domains(domains),
        created_at: row
            .try_get(TenantColumn::CreatedAt as usize)
            .map_err(store_error)?,
        updated_at: row
            .try_get(TenantColumn::UpdatedAt as usize)
            .map_err(store_error)?,
    })
}

/// The tenant of a fetched row, if one was found (see [`tenant_from_row`]).
pub(crate) fn optional_tenant<R>(
    fetched: Result<Option<R>, sqlx::Error>,
) -> Result<Option<Tenant>, StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    DateTime<Utc>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fetched
        .map_err(store_error)?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[RegistryStep] = &[
        RegistryStep {
            version: 1,
            description: "one",
            statements: &[],
        },
        RegistryStep {
            version: 2,
            description: "two",
            statements: &[],
        },
    ];

    #[test]
    fn pending_steps_skip_applied_and_refuse_newer() {
        let versions = |applied: &[i64]| -> Vec<i64> {
            pending_steps(STEPS, applied)
                .unwrap()
                .iter()
                .map(|s| s.version)
                .collect()
        };
        assert_eq!(versions(&[]), [1, 2]);
        assert_eq!(versions(&[1]), [2]);
        assert!(versions(&[1, 2]).is_empty());
        assert!(matches!(
            pending_steps(STEPS, &[1, 2, 3]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn predecessor_slots_cover_exactly_the_predecessors() {
        for status in TenantStatus::ALL {
            let slots = predecessor_slots(status);
            for from in TenantStatus::ALL {
                assert_eq!(slots.contains(&from.as_str()), from.can_become(status));
            }
        }
    }

    #[test]
    fn metadata_must_be_a_json_object() {
        assert!(parse_metadata("{\"a\":1}").is_ok());
        assert!(parse_metadata("[1]").is_err());
        assert!(parse_metadata("{").is_err());
    }
}
