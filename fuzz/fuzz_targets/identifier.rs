//! Arbitrary bytes (lossily decoded as UTF-8) as a tenant identifier and as a name prefix.
//!
//! - `TenantIdentifier::parse`, `IdentifierPolicy::{check, parse}`, `FromStr` and `Deserialize`
//!   agree with each other and with the grammar restated in `tenancy_fuzz::is_identifier`; a
//!   policy with extra reserved names refuses exactly those on top; every error names a rule the
//!   input really breaks.
//! - For an accepted identifier, every `NameTarget` with every valid prefix gives a name
//!   matching `[a-z_][a-z0-9_]*` (prefix + identifier with `-` → `_`, one-to-one) or a length
//!   error, never another error.
//! - The input as a prefix: `check_prefix` follows its documented grammar, a valid prefix never
//!   gives a prefix error and an invalid one always does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tenancy_core::identifier::{MAX_INPUT_BYTES, MAX_LEN, MIN_LEN, check_prefix};
use tenancy_core::{
    DerivedName, DerivedNameError, IdentifierError, IdentifierPolicy, NameTarget, TenantIdentifier,
};
use tenancy_fuzz::{is_derived_name, is_identifier};

const TARGETS: [NameTarget; 6] = [
    NameTarget::PostgresSchema,
    NameTarget::PostgresDatabase,
    NameTarget::PostgresRole,
    NameTarget::MysqlDatabase,
    NameTarget::SqliteFile,
    NameTarget::RedisKey,
];

/// Valid prefixes, from empty to the longest allowed (32 bytes).
const PREFIXES: [&str; 5] = [
    "",
    "_",
    "t1_",
    "tenant_",
    "a_prefix_of_thirty_two_bytes_xy_",
];

const EXTRA_RESERVED: [&str; 2] = ["billing", "status"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_identifier(&text);
    check_prefix_input(&text);
});

fn check_identifier(text: &str) {
    let parsed = TenantIdentifier::parse(text);
    assert_eq!(
        parsed.is_ok(),
        is_identifier(text, &[]),
        "parse and grammar disagree on {text:?}: {parsed:?}"
    );

    let policy = IdentifierPolicy::default();
    assert_eq!(policy.check(text), parsed.clone().map(drop));
    assert_eq!(policy.parse(text), parsed);
    assert_eq!(text.parse::<TenantIdentifier>(), parsed);
    let deserialized =
        serde_json::from_value::<TenantIdentifier>(serde_json::Value::String(text.to_owned()));
    assert_eq!(deserialized.ok(), parsed.clone().ok());

    let strict = IdentifierPolicy::new(EXTRA_RESERVED);
    let strict_parsed = strict.parse(text);
    assert_eq!(strict.check(text), strict_parsed.clone().map(drop));
    assert_eq!(strict_parsed.is_ok(), is_identifier(text, &EXTRA_RESERVED));
    if let (Ok(_), Err(error)) = (&parsed, &strict_parsed) {
        assert!(EXTRA_RESERVED.contains(&text));
        assert_eq!(error, &IdentifierError::Reserved(text.to_owned()));
    }

    match parsed {
        Ok(identifier) => check_derived_names(text, &identifier),
        Err(error) => check_error_names_a_broken_rule(text, &error),
    }
}

fn check_error_names_a_broken_rule(text: &str, error: &IdentifierError) {
    let bytes = text.as_bytes();
    let allowed = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-');
    match *error {
        IdentifierError::InputTooLong { len } => {
            assert!(len == bytes.len() && len > MAX_INPUT_BYTES)
        }
        IdentifierError::TooShort { len } => assert!(len == bytes.len() && len < MIN_LEN),
        IdentifierError::TooLong { len } => {
            assert!(len == bytes.len() && len > MAX_LEN && len <= MAX_INPUT_BYTES)
        }
        IdentifierError::BadCharacter { position } => {
            assert!(!allowed(&bytes[position]));
            assert!(bytes[..position].iter().all(allowed));
        }
        IdentifierError::BadStart => assert!(!bytes[0].is_ascii_lowercase()),
        IdentifierError::BadEnd => assert_eq!(bytes.last(), Some(&b'-')),
        IdentifierError::DoubleHyphen => assert!(text.contains("--")),
        IdentifierError::Reserved(ref name) => assert_eq!(name, text),
    }
}

fn check_derived_names(text: &str, identifier: &TenantIdentifier) {
    assert_eq!(identifier.as_str(), text);
    assert_eq!(identifier.stem(), text.replace('-', "_"));
    for prefix in PREFIXES {
        for target in TARGETS {
            check_derived_name(prefix, identifier, target);
        }
    }
}

/// `prefix` is valid here: the name is well-formed and reversible, or too long.
fn check_derived_name(prefix: &str, identifier: &TenantIdentifier, target: NameTarget) {
    let expected_len = prefix.len() + identifier.as_str().len();
    match DerivedName::new(prefix, identifier, target) {
        Ok(derived) => {
            let name = derived.as_str();
            assert!(is_derived_name(name), "{name:?}");
            assert!(name.len() <= target.limit());
            let stem = name.strip_prefix(prefix).expect("name starts with prefix");
            assert_eq!(stem.replace('_', "-"), identifier.as_str());
            assert_eq!(derived.quoted_postgres(), format!("\"{name}\""));
            assert_eq!(derived.quoted_mysql(), format!("`{name}`"));
        }
        Err(DerivedNameError::TooLong {
            name, len, limit, ..
        }) => {
            assert_eq!(len, expected_len);
            assert_eq!(name.len(), len);
            assert_eq!(limit, target.limit());
            assert!(len > limit);
        }
        Err(other) => panic!("{prefix:?} + {identifier:?} for {target:?}: {other}"),
    }
}

fn check_prefix_input(text: &str) {
    let bytes = text.as_bytes();
    let valid = bytes.len() <= 32
        && bytes
            .first()
            .is_none_or(|b| b.is_ascii_lowercase() || *b == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    assert_eq!(check_prefix(text).is_ok(), valid, "prefix {text:?}");
    let identifier = TenantIdentifier::parse("acme-corp").expect("valid identifier");
    for target in TARGETS {
        if valid {
            check_derived_name(text, &identifier, target);
        } else {
            assert_eq!(
                DerivedName::new(text, &identifier, target),
                Err(DerivedNameError::BadPrefix(text.to_owned()))
            );
        }
    }
}
