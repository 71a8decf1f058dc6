//! The command-line sizes the read-path examples share: how many tenants and orders to set up,
//! and how long to read.

/// Sizes of the data and of the measurement.
#[derive(clap::Args)]
pub struct ReadSizes {
    /// Tenants, each with its own schema or file.
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=9_999))]
    pub tenants: usize,
    /// Orders per tenant.
    #[arg(long, default_value_t = 20)]
    pub orders: usize,
    /// Sequential reads per path.
    #[arg(long, default_value_t = 5_000)]
    pub reads: usize,
    /// Seconds of concurrent reads per path.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}
