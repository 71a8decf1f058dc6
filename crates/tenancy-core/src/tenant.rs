//! The tenant model: what the registry stores about a tenant, and its checked lifecycle.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::identifier::TenantIdentifier;

/// Free-form JSON attributes of a tenant (settings, limits, billing references).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A tenant's stable primary key, independent of its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub uuid::Uuid);

impl TenantId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Where a tenant is in its lifecycle.
///
/// ```text
/// provisioning ──> active <──> suspended
///      │  ▲          │            │
///      ▼  │          ▼            ▼
///     failed ─────> deleted <─────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Being created: its schema, database or rows may not exist yet. Requests are refused.
    Provisioning,
    /// Serving requests.
    Active,
    /// Kept but refused (unpaid bill, abuse). Requests get 403.
    Suspended,
    /// Soft-deleted: data kept until purge. Requests get 404.
    Deleted,
    /// Provisioning failed part-way; running provisioning again finishes or cleans up.
    ProvisioningFailed,
}

impl TenantStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Provisioning,
        Self::Active,
        Self::Suspended,
        Self::Deleted,
        Self::ProvisioningFailed,
    ];

    /// The status as stored and shown (`active`, `suspended`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
            Self::ProvisioningFailed => "provisioning_failed",
        }
    }

    /// The statuses from which `self` may be entered. Stores use this to make a status change
    /// one atomic compare-and-set (`... WHERE status IN (predecessors)`).
    ///
    /// Entering the status a tenant already has is allowed (idempotent), except `provisioning`.
    pub const fn predecessors(self) -> &'static [Self] {
        use TenantStatus::*;
        match self {
            Provisioning => &[ProvisioningFailed],
            Active => &[Provisioning, Active, Suspended],
            Suspended => &[Active, Suspended],
            Deleted => &[Provisioning, Active, Suspended, Deleted, ProvisioningFailed],
            ProvisioningFailed => &[Provisioning, ProvisioningFailed],
        }
    }

    /// Whether a tenant in `self` may move to `next`.
    ///
    /// ```
    /// use tenancy_core::TenantStatus::*;
    /// assert!(Active.can_become(Suspended));
    /// assert!(!Deleted.can_become(Active));
    /// ```
    pub fn can_become(self, next: Self) -> bool {
        next.predecessors().contains(&self)
    }

    /// Checks the move from `self` to `next`.
    pub fn transition(self, next: Self) -> Result<Self, TransitionError> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownValue::new("tenant status", s, &Self::ALL.map(Self::as_str)))
    }
}

/// A status change the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a tenant cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current status.
    pub from: TenantStatus,
    /// The requested status.
    pub to: TenantStatus,
}

/// A value that is not one of the allowed names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}'; expected one of: {allowed}")]
pub struct UnknownValue {
    /// What was being parsed.
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// The allowed values, comma separated.
    pub allowed: String,
}

impl UnknownValue {
    pub(crate) fn new(what: &'static str, value: &str, allowed: &[&str]) -> Self {
        Self {
            what,
            value: value.chars().take(64).collect(),
            allowed: allowed.join(", "),
        }
    }
}

/// How a tenant's data is kept apart from other tenants'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationMode {
    /// PostgreSQL schema per tenant, selected with a transaction-local `search_path`.
    Schema,
    /// Shared tables with a tenant column guarded by PostgreSQL row-level security.
    Rls,
    /// A database per tenant (PostgreSQL, MariaDB/MySQL, or a SQLite file).
    Database,
    /// Per tenant: by its override, else by its tier.
    Hybrid,
}

impl IsolationMode {
    /// Every mode.
    pub const ALL: [Self; 4] = [Self::Schema, Self::Rls, Self::Database, Self::Hybrid];

    /// The mode as configured (`schema`, `rls`, `database`, `hybrid`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Schema => "schema",
            Self::Rls => "rls",
            Self::Database => "database",
            Self::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IsolationMode {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| UnknownValue::new("isolation strategy", s, &Self::ALL.map(Self::as_str)))
    }
}

/// A tenant as the registry stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// Stable primary key.
    pub id: TenantId,
    /// The validated, unique slug used in requests and derived names.
    pub identifier: TenantIdentifier,
    /// Human-readable name.
    pub name: String,
    /// Lifecycle status.
    pub status: TenantStatus,
    /// Plan or tier (`standard`, `premium`, ...); selects hybrid isolation and default limits.
    pub tier: String,
    /// Overrides the isolation mode chosen by tier, for hybrid deployments.
    pub isolation: Option<IsolationMode>,
    /// Name of the database server holding this tenant's database (database-per-tenant).
    pub placement: Option<String>,
    /// Free-form attributes.
    pub metadata: Metadata,
    /// Full custom domains this tenant owns (`shop.acme.com`), lowercase.
    pub domains: Vec<String>,
    /// When the tenant was registered.
    pub created_at: DateTime<Utc>,
    /// When the tenant last changed.
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    /// Whether requests for this tenant may be served.
    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active
    }
}

/// The tier a tenant gets when none is given.
pub const DEFAULT_TIER: &str = "standard";

/// Why a tier, domain or name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Tier outside `[a-z0-9_-]{1,32}`.
    #[error("tier '{0}' must be 1 to 32 characters of a-z, 0-9, '-' or '_'")]
    Tier(String),
    /// Not a lowercase DNS name.
    #[error("domain '{0}' must be a lowercase DNS name with at least two labels (max 253 bytes)")]
    Domain(String),
    /// Empty or too long.
    #[error("tenant name must be 1 to 200 characters")]
    Name,
    /// Placement server name outside `[a-z0-9_-]{1,63}`.
    #[error("placement '{0}' must be 1 to 63 characters of a-z, 0-9, '-' or '_'")]
    Placement(String),
}

fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a tier name.
pub fn check_tier(tier: &str) -> Result<(), FieldError> {
    if is_token(tier, 32) {
        Ok(())
    } else {
        Err(FieldError::Tier(tier.chars().take(64).collect()))
    }
}

/// Checks a placement (server) name.
pub fn check_placement(placement: &str) -> Result<(), FieldError> {
    if is_token(placement, 63) {
        Ok(())
    } else {
        Err(FieldError::Placement(placement.chars().take(64).collect()))
    }
}

/// Checks a tenant's display name.
pub fn check_name(name: &str) -> Result<(), FieldError> {
    let chars = name.chars().count();
    if (1..=200).contains(&chars) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(FieldError::Name)
    }
}

/// Checks a custom domain: lowercase labels of `[a-z0-9-]`, at least two, no trailing dot.
pub fn check_domain(domain: &str) -> Result<(), FieldError> {
    let labels_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if labels_ok && domain.len() <= 253 && domain.contains('.') {
        Ok(())
    } else {
        Err(FieldError::Domain(domain.chars().take(64).collect()))
    }
}

/// What is needed to register a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTenant {
    /// The validated identifier.
    pub identifier: TenantIdentifier,
    /// Display name.
    pub name: String,
    /// Tier; [`DEFAULT_TIER`] when `None`.
    pub tier: Option<String>,
    /// Hybrid isolation override.
    pub isolation: Option<IsolationMode>,
    /// Database server name for database-per-tenant.
    pub placement: Option<String>,
    /// Initial metadata.
    pub metadata: Metadata,
    /// Custom domains.
    pub domains: Vec<String>,
    /// Initial status; `provisioning` unless the caller has nothing to provision.
    pub status: TenantStatus,
}

impl NewTenant {
    /// A tenant with defaults: standard tier, no domains, status `provisioning`.
    ///
    /// ```
    /// use tenancy_core::{NewTenant, TenantIdentifier, TenantStatus};
    /// let new = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme Inc.");
    /// assert_eq!(new.status, TenantStatus::Provisioning);
    /// ```
    pub fn new(identifier: TenantIdentifier, name: impl Into<String>) -> Self {
        Self {
            identifier,
            name: name.into(),
            tier: None,
            isolation: None,
            placement: None,
            metadata: Metadata::new(),
            domains: Vec::new(),
            status: TenantStatus::Provisioning,
        }
    }

    /// Sets the initial status.
    pub fn with_status(mut self, status: TenantStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets the tier.
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Adds a custom domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domains.push(domain.into());
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Checks every field; stores call this before writing.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name(&self.name)?;
        if let Some(tier) = &self.tier {
            check_tier(tier)?;
        }
        if let Some(placement) = &self.placement {
            check_placement(placement)?;
        }
        self.domains.iter().try_for_each(|d| check_domain(d))
    }

    /// Builds the stored tenant with a fresh id and timestamps.
    pub fn into_tenant(self) -> Tenant {
        let now = Utc::now();
        Tenant {
            id: TenantId::new(),
            identifier: self.identifier,
            name: self.name,
            status: self.status,
            tier: self.tier.unwrap_or_else(|| DEFAULT_TIER.to_owned()),
            isolation: self.isolation,
            placement: self.placement,
            metadata: self.metadata,
            domains: self.domains,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A partial update of a tenant's descriptive fields; `None` leaves a field as it is.
/// Status and metadata have their own atomic operations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New tier.
    pub tier: Option<String>,
    /// New isolation override (`Some(None)` clears it).
    pub isolation: Option<Option<IsolationMode>>,
    /// New placement (`Some(None)` clears it).
    pub placement: Option<Option<String>>,
    /// Replaces the custom domains.
    pub domains: Option<Vec<String>>,
}

impl TenantUpdate {
    /// Checks every given field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(tier) = &self.tier {
            check_tier(tier)?;
        }
        if let Some(Some(placement)) = &self.placement {
            check_placement(placement)?;
        }
        if let Some(domains) = &self.domains {
            domains.iter().try_for_each(|d| check_domain(d))?;
        }
        Ok(())
    }

    /// Applies the update to `tenant` in memory (stores with no SQL of their own use this).
    pub fn apply(self, tenant: &mut Tenant) {
        if let Some(name) = self.name {
            tenant.name = name;
        }
        if let Some(tier) = self.tier {
            tenant.tier = tier;
        }
        if let Some(isolation) = self.isolation {
            tenant.isolation = isolation;
        }
        if let Some(placement) = self.placement {
            tenant.placement = placement;
        }
        if let Some(domains) = self.domains {
            tenant.domains = domains;
        }
        tenant.updated_at = Utc::now();
    }
}

/// Merges `patch` into `metadata`: keys in the patch replace existing ones, and a JSON `null`
/// removes the key. Every store applies this same rule.
///
/// ```
/// use serde_json::json;
/// let mut m = json!({"a": 1, "b": 2}).as_object().unwrap().clone();
/// tenancy_core::merge_metadata(&mut m, json!({"b": null, "c": 3}).as_object().unwrap().clone());
/// assert_eq!(serde_json::Value::Object(m), json!({"a": 1, "c": 3}));
/// ```
pub fn merge_metadata(metadata: &mut Metadata, patch: Metadata) {
    for (key, value) in patch {
        if value.is_null() {
            metadata.remove(&key);
        } else {
            metadata.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantStatus::*;

    #[test]
    fn lifecycle_transitions() {
        let allowed = [
            (Provisioning, Active),
            (Provisioning, ProvisioningFailed),
            (Provisioning, Deleted),
            (ProvisioningFailed, Provisioning),
            (ProvisioningFailed, Deleted),
            (Active, Suspended),
            (Suspended, Active),
            (Active, Deleted),
            (Suspended, Deleted),
            (Active, Active),
            (Deleted, Deleted),
        ];
        for from in TenantStatus::ALL {
            for to in TenantStatus::ALL {
                let expected = allowed.contains(&(from, to)) || (from == to && to != Provisioning);
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expected);
            }
        }
        assert_eq!(
            Deleted.transition(Active).unwrap_err().to_string(),
            "a tenant cannot go from deleted to active"
        );
    }

    #[test]
    fn parses_names() {
        assert_eq!("suspended".parse::<TenantStatus>().unwrap(), Suspended);
        assert_eq!("rls".parse::<IsolationMode>().unwrap(), IsolationMode::Rls);
        let err = "tables".parse::<IsolationMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown isolation strategy 'tables'; expected one of: schema, rls, database, hybrid"
        );
    }

    #[test]
    fn field_checks() {
        assert!(check_domain("shop.acme.com").is_ok());
        for bad in [
            "acme",
            "Shop.acme.com",
            "shop..acme.com",
            "shop.acme.com.",
            "-a.com",
            "a b.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        assert!(check_tier("premium").is_ok());
        assert!(check_tier("Premium").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("Acme\n").is_err());
        assert!(check_name("Acme Inc.").is_ok());
    }
}
