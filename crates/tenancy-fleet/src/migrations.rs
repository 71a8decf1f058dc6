//! The tenant migrations: a checked set of sqlx migrations, loaded from a folder of
//! `<version>_<name>.sql` files or embedded by the caller, and the rule deciding which of them
//! a tenant's ledger still lacks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::migrate::{MigrateError, Migration, Migrator};

/// The ledger table sqlx keeps in every tenant schema or database.
pub const LEDGER_TABLE: &str = "_sqlx_migrations";

/// Why a set of migrations cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MigrationsError {
    /// The folder or one of its entries could not be read.
    #[error("cannot read migrations folder '{path}': {source}")]
    Read {
        /// The folder or file concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A `.sql` file whose name is not `<version>_<name>.sql` (sqlx would silently skip it).
    #[error("migration file '{file}' is badly named: {reason}; expected <version>_<name>.sql")]
    BadFileName {
        /// The offending file.
        file: PathBuf,
        /// What is wrong with its name.
        reason: &'static str,
    },
    /// Two migrations share a version.
    #[error("migration version {version} is used twice: '{first}' and '{second}'")]
    DuplicateVersion {
        /// The version.
        version: i64,
        /// The first migration with it.
        first: String,
        /// The second migration with it.
        second: String,
    },
    /// No migration at all: almost certainly a wrong path.
    #[error("no migrations found in '{0}'")]
    Empty(PathBuf),
    /// sqlx could not resolve the migrations.
    #[error("cannot load migrations: {0}")]
    Resolve(#[source] MigrateError),
}

/// One row of a tenant's migration ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The migration's version.
    pub version: i64,
    /// The checksum of the SQL that was applied.
    pub checksum: Vec<u8>,
    /// `false` for a migration that failed part-way on a database without transactional DDL.
    pub success: bool,
}

/// A checked set of tenant migrations, shared cheaply between targets (an `Arc` inside).
///
/// The underlying [`Migrator`] never takes sqlx's database-wide lock (targets take a lock per
/// tenant instead), keeps its ledger in [`LEDGER_TABLE`], and treats a ledger row whose
/// migration is missing from the source as an error.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tenancy_fleet::TenantMigrations;
/// let dir = std::env::temp_dir().join(format!("fleet_doc_{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// std::fs::write(dir.join("1_notes.sql"), "CREATE TABLE notes (body TEXT)").unwrap();
/// std::fs::write(dir.join("2_tags.sql"), "CREATE TABLE tags (name TEXT)").unwrap();
/// let migrations = TenantMigrations::from_dir(&dir).await.unwrap();
/// assert_eq!(migrations.versions(), [1, 2]);
///
/// std::fs::write(dir.join("3-oops.sql"), "SELECT 1").unwrap();
/// let error = TenantMigrations::from_dir(&dir).await.unwrap_err();
/// assert!(error.to_string().contains("3-oops.sql"));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct TenantMigrations {
    migrator: Arc<Migrator>,
    checksums: Arc<HashMap<i64, Vec<u8>>>,
}

impl TenantMigrations {
    /// Loads and checks the folder `dir`: every `.sql` file must be named
    /// `<version>_<name>.sql` (or `.up.sql`/`.down.sql`) with a positive integer version used
    /// once; hidden files and files not ending in `.sql` are ignored; an empty folder is an
    /// error.
    pub async fn from_dir(dir: impl AsRef<Path>) -> Result<Self, MigrationsError> {
        let dir = dir.as_ref().to_owned();
        let checked = dir.clone();
        tokio::task::spawn_blocking(move || check_folder(&checked))
            .await
            .map_err(|join| MigrationsError::Read {
                path: dir.clone(),
                source: std::io::Error::other(join.to_string()),
            })??;
        let migrator = Migrator::new(dir.as_path())
            .await
            .map_err(MigrationsError::Resolve)?;
        Self::checked(migrator, &dir)
    }

    /// Uses migrations embedded by the caller (`sqlx::migrate!()` or
    /// [`Migrator::with_migrations`]). Locking, ledger table and missing-migration handling are
    /// set as described on the type.
    pub fn from_migrator(migrator: Migrator) -> Result<Self, MigrationsError> {
        Self::checked(migrator, Path::new("<embedded>"))
    }

    /// Uses the given migrations.
    pub fn from_migrations(migrations: Vec<Migration>) -> Result<Self, MigrationsError> {
        Self::from_migrator(Migrator::with_migrations(migrations))
    }

    fn checked(mut migrator: Migrator, origin: &Path) -> Result<Self, MigrationsError> {
        migrator.set_locking(false);
        migrator.set_ignore_missing(false);
        migrator.dangerous_set_table_name(LEDGER_TABLE);
        let mut checksums = HashMap::new();
        let mut names: HashMap<i64, String> = HashMap::new();
        for migration in migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
        {
            let name = format!("{}_{}", migration.version, migration.description);
            if let Some(first) = names.insert(migration.version, name.clone()) {
                return Err(MigrationsError::DuplicateVersion {
                    version: migration.version,
                    first,
                    second: name,
                });
            }
            checksums.insert(migration.version, migration.checksum.to_vec());
        }
        if checksums.is_empty() {
            return Err(MigrationsError::Empty(origin.to_owned()));
        }
        Ok(Self {
            migrator: Arc::new(migrator),
            checksums: Arc::new(checksums),
        })
    }

    /// The sqlx migrator (locking off).
    pub fn migrator(&self) -> &Migrator {
        &self.migrator
    }

    /// The versions of the (up) migrations, ascending.
    pub fn versions(&self) -> Vec<i64> {
        self.up_migrations().map(|m| m.version).collect()
    }

    fn up_migrations(&self) -> impl Iterator<Item = &Migration> {
        self.migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
    }

    /// The versions a database with `ledger` still needs, ascending, after the checks sqlx
    /// makes before migrating: no failed (dirty) row, no applied migration missing from the
    /// source, no applied migration whose SQL changed since.
    ///
    /// ```
    /// use sqlx::migrate::{Migration, MigrationType};
    /// use sqlx::SqlSafeStr;
    /// use tenancy_fleet::TenantMigrations;
    /// let sql = |s: &'static str| s.into_sql_str();
    /// let migrations = TenantMigrations::from_migrations(vec![
    ///     Migration::new(1, "a".into(), MigrationType::Simple, sql("SELECT 1"), false),
    ///     Migration::new(2, "b".into(), MigrationType::Simple, sql("SELECT 2"), false),
    /// ])
    /// .unwrap();
    /// assert_eq!(migrations.pending_after(&[]).unwrap(), [1, 2]);
    /// ```
    pub fn pending_after(&self, ledger: &[LedgerEntry]) -> Result<Vec<i64>, MigrateError> {
        if let Some(dirty) = ledger.iter().find(|entry| !entry.success) {
            return Err(MigrateError::Dirty(dirty.version));
        }
        for entry in ledger {
            match self.checksums.get(&entry.version) {
                None => return Err(MigrateError::VersionMissing(entry.version)),
                Some(checksum) if *checksum != entry.checksum => {
                    return Err(MigrateError::VersionMismatch(entry.version));
                }
                Some(_) => {}
            }
        }
        Ok(self
            .up_migrations()
            .map(|m| m.version)
            .filter(|version| !ledger.iter().any(|entry| entry.version == *version))
            .collect())
    }
}

fn check_folder(dir: &Path) -> Result<(), MigrationsError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| MigrationsError::Read { path, source }
    };
    let mut seen: HashMap<(i64, bool), PathBuf> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
        let entry = entry.map_err(read_error(dir))?;
        let path = entry.path();
        if !entry.file_type().map_err(read_error(&path))?.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            if path.extension().is_some_and(|ext| ext == "sql") {
                return Err(bad_name(&path, "the name is not UTF-8"));
            }
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".sql") {
            continue;
        }
        let (version, is_down) = parse_file_name(name).map_err(|reason| bad_name(&path, reason))?;
        if let Some(first) = seen.insert((version, is_down), path.clone()) {
            return Err(MigrationsError::DuplicateVersion {
                version,
                first: first.display().to_string(),
                second: path.display().to_string(),
            });
        }
    }
    Ok(())
}

fn bad_name(path: &Path, reason: &'static str) -> MigrationsError {
    MigrationsError::BadFileName {
        file: path.to_owned(),
        reason,
    }
}

/// Parses `<version>_<name>.sql` (optionally `.up.sql`/`.down.sql`) into the version and
/// whether it is a down migration.
fn parse_file_name(name: &str) -> Result<(i64, bool), &'static str> {
    let stem = name.strip_suffix(".sql").ok_or("it does not end in .sql")?;
    let (stem, is_down) = match stem.strip_suffix(".down") {
        Some(stem) => (stem, true),
        None => (stem.strip_suffix(".up").unwrap_or(stem), false),
    };
    let (version, description) = stem
        .split_once('_')
        .ok_or("there is no '_' between version and name")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the version before the first '_' is not a number");
    }
    let version: i64 = version.parse().map_err(|_| "the version is too large")?;
    if version == 0 {
        return Err("the version must be greater than zero");
    }
    if description.is_empty() {
        return Err("the name after the version is empty");
    }
    Ok((version, is_down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("1_init.sql"), Ok((1, false)));
        assert_eq!(
            parse_file_name("20240101_add_notes.up.sql"),
            Ok((20240101, false))
        );
        assert_eq!(parse_file_name("3_x.down.sql"), Ok((3, true)));
        for bad in [
            "init.sql",
            "1-init.sql",
            "a_init.sql",
            "0_init.sql",
            "1_.sql",
            "_x.sql",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
        assert!(parse_file_name("99999999999999999999_x.sql").is_err());
    }
}
