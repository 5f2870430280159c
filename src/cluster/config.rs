//! Cluster settings: from a `--nodes` list, a `dns:NAME:PORT` name or a
//! TOML file.

use std::time::Duration;

/// Why a cluster configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster configuration: {0}")]
pub struct ConfigError(pub String);

/// How a [`ClusterClient`](super::ClusterClient) places, replicates and
/// times out.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Fast-path addresses (`host:port`) of the nodes. Placement depends on
    /// these exact strings: every client of a cluster must list the same.
    ///
    /// Or a single entry `dns:NAME:PORT`: the nodes are every address
    /// `NAME` resolves to (the system's resolver), each with `PORT`, and
    /// the name is resolved again every [`refresh`](Self::refresh) — a
    /// Kubernetes headless service, Consul, DNS round robin. A node is
    /// then named by its address (`10.1.2.3:50052`): a pod that comes back
    /// with a new IP is a new node.
    pub nodes: Vec<String>,
    /// Copies of each tensor, R. Default: `min(3, nodes)`; with a
    /// `dns:` name, 3, and while the name has fewer addresses than R every
    /// node holds every key.
    pub replicas: usize,
    /// Replicas that must acknowledge a put, W. Default: R. With W = R a
    /// get after a successful put finds the tensor while any one replica
    /// survives; a smaller W makes puts survive node failures at the cost
    /// of that guarantee.
    pub write_quorum: usize,
    /// How long one request to one node may take before the client tries
    /// the next replica and marks the node down.
    pub timeout: Duration,
    /// How long connecting to a node may take.
    pub connect_timeout: Duration,
    /// A node that failed is skipped for this long, doubling with each
    /// further failure up to `backoff_max`; then it is tried again.
    pub backoff_min: Duration,
    /// The longest a failed node is skipped.
    pub backoff_max: Duration,
    /// Hedged reads: if the first replica has not answered a get after
    /// this long, ask the second as well and take the first answer. Costs
    /// extra load on slow reads; `None` (the default) reads one at a time.
    pub hedge_after: Option<Duration>,
    /// The largest tensor a node's reply may make this client allocate
    /// ([`FastClientOptions::max_payload`](crate::fast::FastClientOptions::max_payload)).
    pub max_payload: u64,
    /// With a `dns:` name: how often it is resolved again, while the client
    /// is in use (in the background; requests go on with the last good
    /// node set). Default 5 s.
    pub refresh: Duration,
    /// With a `dns:` name: after the node set changes, a get that misses
    /// on a key's new replicas also asks the key's replicas under the
    /// earlier set, for this long, and writes what it finds back to the
    /// new ones (read repair). Default 60 s (the servers' default
    /// `--tombstone-ttl`); zero turns it off.
    pub grace: Duration,
    /// A local cache in front of the whole cluster
    /// ([`L1`](crate::client::L1)): gets it holds make no request. `None`
    /// (the default) for none.
    pub l1: Option<crate::client::L1Options>,
}

/// Where the nodes come from: [`ClusterConfig::nodes`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NodeSource {
    /// A fixed list.
    List,
    /// Every address `name` resolves to, with `port`.
    Dns { name: String, port: u16 },
}

impl ClusterConfig {
    /// Defaults for `nodes`.
    pub fn new(nodes: Vec<String>) -> ClusterConfig {
        let replicas = if nodes.iter().any(|n| n.starts_with(DNS)) {
            3
        } else {
            nodes.len().clamp(1, 3)
        };
        ClusterConfig {
            nodes,
            replicas,
            write_quorum: replicas,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            hedge_after: None,
            max_payload: crate::fast::FastClientOptions::default().max_payload,
            refresh: Duration::from_secs(5),
            grace: Duration::from_secs(60),
            l1: None,
        }
    }

    /// A `--nodes` argument: the path of a TOML file
    /// ([`load`](Self::load)), else a list
    /// ([`parse_nodes`](Self::parse_nodes)) or a `dns:NAME:PORT` name with
    /// the defaults.
    ///
    /// ```
    /// use redstone::cluster::ClusterConfig;
    /// let c = ClusterConfig::from_arg("dns:redstone.cache.svc.cluster.local:50052")?;
    /// assert_eq!((c.replicas, c.refresh.as_secs()), (3, 5));
    /// assert_eq!(ClusterConfig::from_arg("a:1,b:1")?.replicas, 2);
    /// # Ok::<(), redstone::cluster::ConfigError>(())
    /// ```
    pub fn from_arg(arg: &str) -> Result<ClusterConfig, ConfigError> {
        let path = std::path::Path::new(arg);
        if path.is_file() {
            return ClusterConfig::load(path);
        }
        let config = ClusterConfig::new(ClusterConfig::parse_nodes(arg)?);
        config.validate()?;
        Ok(config)
    }

    /// Whether the nodes are a list or a `dns:` name.
    pub(super) fn source(&self) -> Result<NodeSource, ConfigError> {
        let Some(spec) = self.nodes.iter().find_map(|n| n.strip_prefix(DNS)) else {
            return Ok(NodeSource::List);
        };
        if self.nodes.len() > 1 {
            return Err(ConfigError(format!(
                "a {DNS}NAME:PORT entry must be the only node entry"
            )));
        }
        let bad = || ConfigError(format!("{DNS}{spec:?} is not {DNS}NAME:PORT"));
        let (name, port) = spec.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if name.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(NodeSource::Dns {
            name: name.to_owned(),
            port,
        })
    }

    /// Parses a comma-separated node list: `a:50052,b:50052,c:50052`.
    pub fn parse_nodes(list: &str) -> Result<Vec<String>, ConfigError> {
        let nodes: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() {
            return Err(ConfigError("the node list is empty".into()));
        }
        Ok(nodes)
    }

    /// Checks the settings: at least one node, no duplicates,
    /// `1 ≤ W ≤ R ≤ nodes` (with a `dns:` name, `1 ≤ W ≤ R` and a refresh
    /// period).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.nodes.len();
        if n == 0 {
            return Err(ConfigError("no nodes".into()));
        }
        let dns = matches!(self.source()?, NodeSource::Dns { .. });
        if dns && self.refresh.is_zero() {
            return Err(ConfigError("refresh must be more than zero".into()));
        }
        if !dns {
            let mut sorted = self.nodes.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != n {
                return Err(ConfigError("a node is listed twice".into()));
            }
        }
        // A name's node count is not known here: R is capped by it later.
        if self.replicas == 0 || (!dns && self.replicas > n) {
            let range = if dns {
                "at least 1".to_owned()
            } else {
                format!("1 to {n} (the number of nodes)")
            };
            return Err(ConfigError(format!(
                "replicas must be {range}, not {}",
                self.replicas
            )));
        }
        if self.write_quorum == 0 || self.write_quorum > self.replicas {
            return Err(ConfigError(format!(
                "write_quorum must be 1 to {} (replicas), not {}",
                self.replicas, self.write_quorum
            )));
        }
        Ok(())
    }

    /// Reads a TOML file's text (parsed by the `toml` crate); unknown keys
    /// are errors, and a malformed file's error names the line.
    ///
    /// ```toml
    /// nodes = ["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052"]
    /// # or: nodes = "dns:redstone.cache.svc.cluster.local:50052"
    /// replicas = 2          # optional, default min(3, nodes)
    /// write_quorum = 2      # optional, default replicas
    /// timeout_ms = 2000     # optional
    /// connect_timeout_ms = 1000
    /// backoff_min_ms = 100
    /// backoff_max_ms = 5000
    /// hedge_after_ms = 20   # optional: hedged reads
    /// refresh_ms = 5000     # with dns: re-resolve this often
    /// grace_ms = 60000      # with dns: read the previous placement this long
    /// ```
    ///
    /// ```
    /// use redstone::cluster::ClusterConfig;
    /// let c = ClusterConfig::from_toml("nodes = [\"a:1\", \"b:1\"]\nreplicas = 1\n")?;
    /// assert_eq!((c.nodes.len(), c.replicas, c.write_quorum), (2, 1, 1));
    /// # Ok::<(), redstone::cluster::ConfigError>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<ClusterConfig, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError(toml_error(text, &e)))?;
        let nodes = match file.nodes {
            NodesField::One(list) => ClusterConfig::parse_nodes(&list)?,
            NodesField::List(nodes) => nodes,
        };
        let mut config = ClusterConfig::new(nodes);
        let ms = Duration::from_millis;
        if let Some(r) = file.replicas {
            config.replicas = r;
        }
        config.write_quorum = file.write_quorum.unwrap_or(config.replicas);
        config.timeout = file.timeout_ms.map_or(config.timeout, ms);
        config.connect_timeout = file.connect_timeout_ms.map_or(config.connect_timeout, ms);
        config.backoff_min = file.backoff_min_ms.map_or(config.backoff_min, ms);
        config.backoff_max = file.backoff_max_ms.map_or(config.backoff_max, ms);
        config.hedge_after = file.hedge_after_ms.map(ms);
        config.refresh = file.refresh_ms.map_or(config.refresh, ms);
        config.grace = file.grace_ms.map_or(config.grace, ms);
        config.validate()?;
        Ok(config)
    }

    /// Reads [`from_toml`](Self::from_toml) from a file.
    pub fn load(path: &std::path::Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        ClusterConfig::from_toml(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }
}

/// The cluster file's keys.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    nodes: NodesField,
    replicas: Option<usize>,
    write_quorum: Option<usize>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    backoff_min_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    hedge_after_ms: Option<u64>,
    refresh_ms: Option<u64>,
    grace_ms: Option<u64>,
}

/// `nodes = [...]`, or one string: a list or a `dns:` name.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum NodesField {
    One(String),
    List(Vec<String>),
}

/// The prefix of a node entry that is a DNS name.
const DNS: &str = "dns:";

/// A TOML error as one line: `line N: what`.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {what}")
        }
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_comments_and_multiline_array() {
        let c = ClusterConfig::from_toml(
            "# three nodes\nnodes = [\n  \"a:1\", # first\n  \"b:1\",\n  \"c:1\",\n]\nreplicas = 2\ntimeout_ms = 250\n",
        )
        .unwrap();
        assert_eq!(c.nodes, ["a:1", "b:1", "c:1"]);
        assert_eq!((c.replicas, c.write_quorum), (2, 2));
        assert_eq!(c.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            "",
            "nodes = []",
            "nodes = [\"a:1\"]\nreplicas = 2",
            "nodes = [\"a:1\", \"b:1\"]\nwrite_quorum = 3",
            "nodes = [\"a:1\", \"a:1\"]",
            "nodes = [a:1]",
            "nodes = [\"a:1\"]\ncolour = 3",
            "nodes = [\"a:1\"]\nreplicas = two",
            "nodes = [\"a:1\"]\nreplicas = -1",
        ] {
            assert!(ClusterConfig::from_toml(bad).is_err(), "{bad:?}");
        }
        // A malformed file's error names its line.
        let err = ClusterConfig::from_toml("nodes = [\"a:1\"]\n\nreplicas = two\n").unwrap_err();
        assert!(err.0.starts_with("line 3:"), "{err}");
        let err = ClusterConfig::from_toml("nodes = [\"a:1\"]\ncolour = 3\n").unwrap_err();
        assert!(
            err.0.starts_with("line 2:") && err.0.contains("colour"),
            "{err}"
        );
        assert_eq!(
            ClusterConfig::parse_nodes(" a:1, b:2 ,").unwrap(),
            ["a:1", "b:2"]
        );
        assert!(ClusterConfig::parse_nodes(" , ").is_err());
    }

    #[test]
    fn a_dns_name_is_the_only_entry_and_has_a_port() {
        let c = ClusterConfig::from_toml(
            "nodes = \"dns:redstone.cache.svc:50052\"\nreplicas = 2\nrefresh_ms = 250\ngrace_ms = 0\n",
        )
        .unwrap();
        assert_eq!(
            c.source().unwrap(),
            NodeSource::Dns {
                name: "redstone.cache.svc".into(),
                port: 50052
            }
        );
        assert_eq!((c.replicas, c.write_quorum), (2, 2));
        assert_eq!(
            (c.refresh, c.grace),
            (Duration::from_millis(250), Duration::ZERO)
        );
        // R is not bounded by the one entry; W still by R.
        assert!(ClusterConfig::from_arg("dns:h:1")
            .unwrap()
            .validate()
            .is_ok());
        for bad in [
            "dns:h:1,a:1",
            "dns:h",
            "dns::1",
            "dns:h:0",
            "dns:h:65536",
            "dns:h:port",
        ] {
            assert!(ClusterConfig::from_arg(bad).is_err(), "{bad:?}");
        }
        let c = ClusterConfig {
            refresh: Duration::ZERO,
            ..ClusterConfig::new(vec!["dns:h:1".into()])
        };
        assert!(c.validate().is_err());
        let c = ClusterConfig {
            write_quorum: 4,
            ..ClusterConfig::new(vec!["dns:h:1".into()])
        };
        assert!(c.validate().is_err());
        let c = ClusterConfig {
            replicas: 0,
            ..ClusterConfig::new(vec!["dns:h:1".into()])
        };
        let err = c.validate().unwrap_err();
        assert!(err.0.contains("at least 1"), "{err}");
        assert_eq!(
            ClusterConfig::from_toml("nodes = \"a:1, b:1\"")
                .unwrap()
                .nodes,
            ["a:1", "b:1"]
        );
    }

    #[test]
    fn defaults_follow_the_node_count() {
        assert_eq!(ClusterConfig::new(vec!["a".into()]).replicas, 1);
        let five = ClusterConfig::new((0..5).map(|i| i.to_string()).collect());
        assert_eq!((five.replicas, five.write_quorum), (3, 3));
    }
}
