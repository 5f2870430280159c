//! `server --config FILE`: the flags' settings from a TOML file. Keys are
//! the flags' long names; a flag given on the command line wins over the
//! file, and the file over the defaults.

use std::net::SocketAddr;
use std::path::Path;

use clap::parser::ValueSource;
use clap::ArgMatches;
use redstone::size::parse_size;
use serde::Deserialize;

use super::{Args, Listen, LogFormat};

/// The file's keys: every flag but `--config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServerFile {
    addr: Option<SocketAddr>,
    cache_size: Option<Size>,
    fast: Option<SocketAddr>,
    metrics: Option<Listen>,
    log_format: Option<LogFormat>,
    max_tensor: Option<Size>,
    max_header: Option<Size>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    idle_timeout: Option<u64>,
    write_timeout: Option<u64>,
    max_queued_bytes: Option<Size>,
    max_queued_total: Option<Size>,
    max_ingress: Option<Size>,
    grpc_max_connections: Option<usize>,
    grpc_max_streams: Option<u32>,
    tombstone_ttl: Option<u64>,
    shutdown_grace: Option<u64>,
    disk_dir: Option<std::path::PathBuf>,
    disk_size: Option<Size>,
    disk_queue: Option<Size>,
    persist_on_shutdown: Option<bool>,
    uds: Option<std::path::PathBuf>,
    uds_mode: Option<String>,
    max_leased: Option<Size>,
}

/// A byte size: a number of bytes, or a string such as `"512MiB"`,
/// checked as the file is parsed (so that an error names its line).
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawSize")]
struct Size(u64);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

impl TryFrom<RawSize> for Size {
    type Error = String;

    fn try_from(raw: RawSize) -> Result<Size, String> {
        match raw {
            RawSize::Bytes(n) => Ok(Size(n)),
            RawSize::Text(text) => parse_size(&text).map(Size),
        }
    }
}

impl Size {
    fn bytes(self) -> Result<u64, String> {
        Ok(self.0)
    }
}

/// Fills the settings of `args` not given on the command line from the
/// TOML file at `path`.
pub(super) fn apply(path: &Path, args: &mut Args, matches: &ArgMatches) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    let file: ServerFile =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let on_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let bad = |key: &str, e: String| format!("--config {}: {key}: {e}", path.display());
    // Sets `args.$field` from the file unless the flag was given, through
    // `$convert` (the identity, `Some`, or a size parser).
    macro_rules! merge {
        ($($field:ident => $convert:expr),* $(,)?) => {$(
            if let Some(value) = file.$field {
                if !on_command_line(stringify!($field)) {
                    let convert: &dyn Fn(_) -> Result<_, String> = &$convert;
                    args.$field = convert(value).map_err(|e| bad(stringify!($field), e))?;
                }
            }
        )*};
    }
    merge!(
        addr => Ok,
        cache_size => Size::bytes,
        fast => |a| Ok(Some(a)),
        metrics => Ok,
        log_format => Ok,
        max_tensor => |s: Size| s.bytes().map(Some),
        max_header => Size::bytes,
        max_connections => Ok,
        max_in_flight => Ok,
        idle_timeout => Ok,
        write_timeout => Ok,
        max_queued_bytes => Size::bytes,
        max_queued_total => Size::bytes,
        max_ingress => |s: Size| s.bytes().map(Some),
        grpc_max_connections => Ok,
        grpc_max_streams => Ok,
        tombstone_ttl => Ok,
        shutdown_grace => Ok,
        disk_dir => |d| Ok(Some(d)),
        disk_size => |s: Size| s.bytes().map(Some),
        disk_queue => Size::bytes,
        persist_on_shutdown => Ok,
        uds => |p| Ok(Some(p)),
        uds_mode => |m: String| super::parse_mode(&m),
        max_leased => |s: Size| s.bytes().map(Some),
    );
    if args.disk_dir.is_some() != args.disk_size.is_some() {
        return Err(format!(
            "--config {}: disk-dir and disk-size go together",
            path.display()
        ));
    }
    Ok(())
}
