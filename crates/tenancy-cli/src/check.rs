//! `tenancy config check`: the effective configuration with secrets masked, or every problem.

use std::io::Write as _;
use std::process::ExitCode;

use tenancy::TenancyConfig;

/// Prints the configuration and exits 0, or prints each problem (naming its variable) on
/// stderr and exits 2.
pub fn run() -> ExitCode {
    match TenancyConfig::from_env() {
        Ok(config) => {
            // `Debug` masks every secret (passwords in URLs, the JWT secret).
            let printed = writeln!(std::io::stdout().lock(), "{config:#?}\nconfiguration ok");
            match printed {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tenancy: cannot write the output: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!(
                "tenancy: the configuration has {} problem(s):",
                error.problems().len()
            );
            for problem in error.problems() {
                eprintln!("  - {problem}");
            }
            ExitCode::from(2)
        }
    }
}
