//! Command line to validated configuration.

use std::net::SocketAddr;

use clap::Parser;

use crate::source::simulated::SimKind;

/// Export USB devices over USB/IP.
#[derive(Debug, Parser)]
#[command(name = "hrh-exporter", version, about)]
pub struct Args {
    /// Address and port to serve USB/IP on.
    #[arg(long, default_value = "0.0.0.0:3240", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Export a simulated dongle: `sensor`, `pendrive=IMAGE` or `loopback`.
    /// Repeatable; bus ids are 1-1, 1-2, … in the order given.
    #[arg(long, value_name = "KIND[=ARG]")]
    pub simulate: Vec<SimKind>,
}

/// What the exporter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub simulated: Vec<SimKind>,
}

/// A command line that parses but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("nothing to export: give at least one --simulate")]
    NothingToExport,
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, Self::Error> {
        if args.simulate.is_empty() {
            return Err(ConfigError::NothingToExport);
        }
        Ok(Config {
            listen: args.listen,
            simulated: args.simulate,
        })
    }
}
