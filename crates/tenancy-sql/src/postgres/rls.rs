//! Row-level security for shared tables: the policy every tenant table gets, the grants of the
//! runtime role, and the start-up audit that refuses a set-up in which RLS would not hold.

use sqlx::postgres::Postgres;
use sqlx::{Acquire, AssertSqlSafe, PgConnection, Row};
use tenancy_core::quote_postgres_ident;

use super::isolation::{TenantSetting, quote_literal, quote_simple_name, quote_table_name};
use crate::isolation_error::IsolationError;

/// The name of the policy [`rls_policy_sql`] creates.
pub const POLICY_NAME: &str = "tenancy_isolation";

/// The SQL that puts `table` (`table` or `schema.table`) under tenant row-level security:
/// RLS enabled and forced (so the table owner is subject to it too), and one policy for all
/// commands whose `USING` and `WITH CHECK` compare `column` with the tenant setting. An unset
/// or empty setting matches no row. Re-running it replaces the policy.
///
/// ```
/// use tenancy_sql::postgres::{TenantSetting, rls_policy_sql};
/// let sql = rls_policy_sql("public.orders", "tenant_id", &TenantSetting::default()).unwrap();
/// assert!(sql.contains("ALTER TABLE \"public\".\"orders\" FORCE ROW LEVEL SECURITY"));
/// assert!(sql.contains(
///     "WITH CHECK (\"tenant_id\" = NULLIF(pg_catalog.current_setting('app.tenant_id', true), ''))"
/// ));
/// assert!(rls_policy_sql("orders; DROP TABLE x", "tenant_id", &TenantSetting::default()).is_err());
/// ```
pub fn rls_policy_sql(
    table: &str,
    column: &str,
    setting: &TenantSetting,
) -> Result<String, IsolationError> {
    let table = quote_table_name(table)?;
    let column = quote_simple_name("tenant column", column)?;
    let tenant = format!(
        "{column} = NULLIF(pg_catalog.current_setting({}, true), '')",
        quote_literal(setting.as_str())
    );
    Ok(format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY; \
         DROP POLICY IF EXISTS {POLICY_NAME} ON {table}; \
         CREATE POLICY {POLICY_NAME} ON {table} FOR ALL USING ({tenant}) WITH CHECK ({tenant})"
    ))
}

/// Applies [`rls_policy_sql`] to `table` in one implicit transaction. Run it as the table owner.
pub async fn apply_rls_policy(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    setting: &TenantSetting,
) -> Result<(), IsolationError> {
    let sql = rls_policy_sql(table, column, setting)?;
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

/// Grants `runtime_role` what the application needs on the tenant `tables` and nothing more:
/// `USAGE` on their schemas, `SELECT, INSERT, UPDATE, DELETE` on the tables and `USAGE` on the
/// sequences behind their serial/identity columns. Ownership stays with the admin role.
pub async fn grant_tenant_tables(
    conn: &mut PgConnection,
    runtime_role: &str,
    tables: &[&str],
) -> Result<(), IsolationError> {
    let role = quote_postgres_ident(runtime_role);
    let mut statements = Vec::new();
    for table in tables {
        let quoted = quote_table_name(table)?;
        if let Some((schema, _)) = table.split_once('.') {
            statements.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {role}",
                quote_postgres_ident(schema)
            ));
        }
        statements.push(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {quoted} TO {role}"
        ));
        let sequences: Vec<String> = sqlx::query_scalar(
            "SELECT s.oid::regclass::text FROM pg_catalog.pg_class s \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::regclass \
              AND d.objid = s.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
             WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') AND d.refobjid = $1::regclass",
        )
        .bind(&quoted)
        .fetch_all(&mut *conn)
        .await?;
        statements.extend(
            sequences
                .into_iter()
                .map(|sequence| format!("GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {role}")),
        );
    }
    sqlx::raw_sql(AssertSqlSafe(statements.join("; ")))
        .execute(conn)
        .await?;
    Ok(())
}

/// A reason the start-up audit refuses the RLS set-up. `Display` says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RlsProblem {
    /// The runtime role does not exist.
    #[error(
        "runtime role '{role}' does not exist: create it with CREATE ROLE .. LOGIN NOSUPERUSER NOBYPASSRLS"
    )]
    RoleMissing {
        /// The runtime role.
        role: String,
    },
    /// Superusers bypass row-level security.
    #[error(
        "runtime role '{role}' is a superuser, which bypasses row-level security: connect as a role with NOSUPERUSER NOBYPASSRLS"
    )]
    Superuser {
        /// The runtime role.
        role: String,
    },
    /// The role has the BYPASSRLS attribute.
    #[error("runtime role '{role}' has BYPASSRLS: run ALTER ROLE {role} NOBYPASSRLS")]
    BypassRls {
        /// The runtime role.
        role: String,
    },
    /// The role can `SET ROLE` to a role that bypasses RLS.
    #[error(
        "runtime role '{role}' is a member of '{privileged}', a superuser or BYPASSRLS role: revoke that membership"
    )]
    MemberOfPrivilegedRole {
        /// The runtime role.
        role: String,
        /// The superuser or BYPASSRLS role it can become.
        privileged: String,
    },
    /// The runtime role owns (or is a member of the owner of) a tenant table: owners can
    /// disable RLS or drop the policy.
    #[error(
        "runtime role '{role}' owns tenant table {table} (owner '{owner}'): make an admin role the owner (ALTER TABLE {table} OWNER TO <admin>) and grant the runtime role only SELECT, INSERT, UPDATE, DELETE"
    )]
    OwnsTable {
        /// The runtime role.
        role: String,
        /// The table.
        table: String,
        /// The table's owner.
        owner: String,
    },
    /// RLS is not enabled on a tenant table.
    #[error(
        "row-level security is not enabled on tenant table {table}: run ALTER TABLE {table} ENABLE ROW LEVEL SECURITY (or apply_rls_policy)"
    )]
    NotEnabled {
        /// The table.
        table: String,
    },
    /// RLS is not forced on a tenant table, so its owner bypasses it.
    #[error(
        "row-level security is not forced on tenant table {table}: run ALTER TABLE {table} FORCE ROW LEVEL SECURITY (or apply_rls_policy)"
    )]
    NotForced {
        /// The table.
        table: String,
    },
    /// No permissive policy for all commands with `USING` and `WITH CHECK` on the tenant
    /// setting applies to the runtime role.
    #[error(
        "tenant table {table} has no policy FOR ALL with USING and WITH CHECK on current_setting('{setting}') applying to the runtime role: apply rls_policy_sql to it"
    )]
    MissingPolicy {
        /// The table.
        table: String,
        /// The tenant setting.
        setting: String,
    },
    /// No table has the tenant column: the column name is wrong or migrations have not run.
    #[error(
        "no table has a column '{column}': check the tenant column name and run the migrations before the audit"
    )]
    NoTenantTables {
        /// The tenant column.
        column: String,
    },
    /// The audit could not read the catalog.
    #[error("the RLS audit could not read the catalog: {0}")]
    Query(#[from] sqlx::Error),
}

/// Checks, at start-up, that row-level security holds for `runtime_role` on every table with a
/// `column` column (outside the system schemas and the registry's own tables): the role is not
/// a superuser, has no BYPASSRLS, cannot become such a role, owns none of those tables; each
/// table has RLS enabled and forced and a policy for all commands with `USING` and `WITH CHECK` on `setting`. Run it as an
/// admin; `admin` is a pool or a connection.
pub async fn audit_rls<'a, A>(
    admin: A,
    runtime_role: &str,
    setting: &TenantSetting,
    column: &str,
) -> Result<(), Vec<RlsProblem>>
where
    A: Acquire<'a, Database = Postgres>,
{
    let mut conn = admin.acquire().await.map_err(|e| vec![e.into()])?;
    let mut problems = Vec::new();
    role_problems(&mut conn, runtime_role, &mut problems)
        .await
        .map_err(|e| vec![e.into()])?;
    table_problems(&mut conn, runtime_role, setting, column, &mut problems)
        .await
        .map_err(|e| vec![e.into()])?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

async fn role_problems(
    conn: &mut PgConnection,
    role: &str,
    problems: &mut Vec<RlsProblem>,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query(
        "SELECT r.rolsuper, r.rolbypassrls, \
         ARRAY(SELECT p.rolname::text FROM pg_catalog.pg_roles p \
               WHERE p.oid <> r.oid AND (p.rolsuper OR p.rolbypassrls) \
                 AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER') ORDER BY 1) \
         FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        problems.push(RlsProblem::RoleMissing { role: role.into() });
        return Ok(());
    };
    if row.try_get::<bool, _>(0)? {
        problems.push(RlsProblem::Superuser { role: role.into() });
    }
    if row.try_get::<bool, _>(1)? {
        problems.push(RlsProblem::BypassRls { role: role.into() });
    }
    for privileged in row.try_get::<Vec<String>, _>(2)? {
        problems.push(RlsProblem::MemberOfPrivilegedRole {
            role: role.into(),
            privileged,
        });
    }
    Ok(())
}

async fn table_problems(
    conn: &mut PgConnection,
    role: &str,
    setting: &TenantSetting,
    column: &str,
    problems: &mut Vec<RlsProblem>,
) -> Result<(), sqlx::Error> {
    let setting_call = format!("current_setting({}", quote_literal(setting.as_str()));
    let rows = sqlx::query(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
                pg_catalog.pg_get_userbyid(c.relowner)::text, \
                COALESCE((SELECT pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER') \
                          FROM pg_catalog.pg_roles r WHERE r.rolname = $1), false), \
                c.relrowsecurity, c.relforcerowsecurity, \
                EXISTS (SELECT 1 FROM pg_catalog.pg_policy p \
                        WHERE p.polrelid = c.oid AND p.polcmd = '*' AND p.polpermissive \
                          AND p.polqual IS NOT NULL AND p.polwithcheck IS NOT NULL \
                          AND strpos(pg_catalog.pg_get_expr(p.polqual, p.polrelid), $3) > 0 \
                          AND strpos(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), $3) > 0 \
                          AND (0::oid = ANY (p.polroles) OR EXISTS ( \
                               SELECT 1 FROM unnest(p.polroles) AS pr(oid) \
                               JOIN pg_catalog.pg_roles r ON r.rolname = $1 \
                               WHERE pg_catalog.pg_has_role(r.oid, pr.oid, 'MEMBER')))) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
         WHERE a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
           AND c.relkind IN ('r', 'p') \
           AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
           AND NOT (c.relname = ANY ($4)) \
         ORDER BY 1",
    )
    .bind(role)
    .bind(column)
    .bind(&setting_call)
    .bind(crate::REGISTRY_TABLES)
    .fetch_all(conn)
    .await?;
    if rows.is_empty() {
        problems.push(RlsProblem::NoTenantTables {
            column: column.into(),
        });
    }
    for row in rows {
        let table: String = row.try_get(0)?;
        if row.try_get::<bool, _>(2)? {
            problems.push(RlsProblem::OwnsTable {
                role: role.into(),
                table: table.clone(),
                owner: row.try_get(1)?,
            });
        }
        if !row.try_get::<bool, _>(3)? {
            problems.push(RlsProblem::NotEnabled {
                table: table.clone(),
            });
        }
        if !row.try_get::<bool, _>(4)? {
            problems.push(RlsProblem::NotForced {
                table: table.clone(),
            });
        }
        if !row.try_get::<bool, _>(5)? {
            problems.push(RlsProblem::MissingPolicy {
                table,
                setting: setting.as_str().into(),
            });
        }
    }
    Ok(())
}
