//! `redstone` as a user runs it, against real servers on ephemeral ports:
//! each subcommand's success and failure paths, and exit codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use npyz::WriterBuilder;
use redstone::client::FastClient;
use redstone::server::{Config, Server, ServerHandle};

/// A server on its own runtime, stopped when dropped.
struct TestServer {
    runtime: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
}

impl TestServer {
    fn start() -> TestServer {
        TestServer::start_with(None)
    }

    /// A server over a disk tier in `disk`, if given.
    fn start_with(disk: Option<redstone::disk::DiskConfig>) -> TestServer {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let config = Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            fast_addr: "127.0.0.1:0".parse().unwrap(),
            memory_limit: 256 << 20,
            disk,
            ..Config::default()
        };
        let handle = runtime.block_on(async { Server::bind(config).await.unwrap().spawn() });
        TestServer {
            runtime,
            handle: Some(handle),
        }
    }

    fn fast(&self) -> String {
        self.handle.as_ref().unwrap().fast_addr().to_string()
    }

    fn grpc(&self) -> String {
        self.handle.as_ref().unwrap().grpc_addr().to_string()
    }

    fn client<T>(&self, f: impl AsyncFnOnce(FastClient) -> T) -> T {
        self.runtime.block_on(async {
            let client = FastClient::connect(self.fast()).await.unwrap();
            f(client).await
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown()).ok();
        }
    }
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redstone-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn redstone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redstone"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `redstone ARGS` and checks its exit code; returns stdout, or
/// stderr on failure.
fn expect(code: i32, args: &[&str]) -> String {
    let out = redstone(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "redstone {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    if code == 0 {
        stdout
    } else {
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
        stderr
    }
}

fn write_npy_f32(path: &Path, shape: &[u64], values: &[f32]) {
    let mut out = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut out)
        .begin_nd()
        .unwrap();
    writer.extend(values.iter().copied()).unwrap();
    writer.finish().unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn put_get_del_through_npy_files() {
    let server = TestServer::start();
    let dir = scratch("npy");
    let input = dir.join("in.npy");
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 1.5).collect();
    write_npy_f32(&input, &[2, 3], &values);
    let addr = server.fast();
    let out = expect(0, &["--addr", &addr, "put", "emb", input.to_str().unwrap()]);
    assert!(out.contains("F32 [2, 3]"), "{out}");
    // The server holds exactly those bytes.
    let stored = server.client(async |c| c.get("emb").await.unwrap().unwrap());
    assert_eq!(stored.to_vec::<f32>().unwrap(), values);

    let output = dir.join("out.npy");
    expect(
        0,
        &[
            "--addr",
            &addr,
            "get",
            "emb",
            "-o",
            output.to_str().unwrap(),
        ],
    );
    let back = std::fs::read(&output).unwrap();
    let npy = npyz::NpyFile::new(&back[..]).unwrap();
    assert_eq!(npy.shape(), &[2, 3]);
    assert_eq!(npy.into_vec::<f32>().unwrap(), values);

    // A second put of the key is refused; a missing key is exit 1.
    let err = expect(1, &["--addr", &addr, "put", "emb", input.to_str().unwrap()]);
    assert!(err.contains("emb"), "{err}");
    let err = expect(
        1,
        &[
            "--addr",
            &addr,
            "get",
            "nope",
            "-o",
            output.to_str().unwrap(),
        ],
    );
    assert!(err.contains("not found: nope"), "{err}");
    expect(0, &["--addr", &addr, "del", "emb"]);
    let err = expect(1, &["--addr", &addr, "del", "emb"]);
    assert!(err.contains("not found"), "{err}");

    // Not a .npy file: usage (2), before anything is sent.
    let junk = dir.join("junk.npy");
    std::fs::write(&junk, b"this is not numpy").unwrap();
    let err = expect(2, &["--addr", &addr, "put", "junk", junk.to_str().unwrap()]);
    assert!(err.contains("not a .npy file"), "{err}");
    // A header that promises more data than the file has.
    write_npy_f32(&input, &[2, 3], &values);
    let mut short = std::fs::read(&input).unwrap();
    short.truncate(short.len() - 4);
    std::fs::write(&junk, short).unwrap();
    expect(2, &["--addr", &addr, "put", "junk", junk.to_str().unwrap()]);
    assert!(server.client(async |c| c.get("junk").await.unwrap().is_none()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_grpc_door_and_usage_and_unreachable_exit_codes() {
    let server = TestServer::start();
    let dir = scratch("grpc");
    let input = dir.join("in.npy");
    write_npy_f32(&input, &[4], &[1.0, 2.0, 3.0, 4.0]);
    let grpc = server.grpc();
    expect(
        0,
        &[
            "--grpc",
            "--addr",
            &grpc,
            "put",
            "g",
            input.to_str().unwrap(),
        ],
    );
    let out = dir.join("out.npy");
    expect(
        0,
        &[
            "--grpc",
            "--addr",
            &grpc,
            "get",
            "g",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let back = std::fs::read(&out).unwrap();
    assert_eq!(
        npyz::NpyFile::new(&back[..])
            .unwrap()
            .into_vec::<f32>()
            .unwrap(),
        [1.0, 2.0, 3.0, 4.0]
    );
    let stats = expect(0, &["--grpc", "--addr", &grpc, "stats"]);
    let row: Vec<&str> = stats.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[1]), (grpc.as_str(), "1"), "{stats}");

    // Usage: a missing argument, an unknown subcommand.
    expect(2, &["get", "k"]);
    expect(2, &["frobnicate"]);
    // Nobody listening: 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dead = format!("127.0.0.1:{port}");
    let err = expect(3, &["--addr", &dead, "stats"]);
    assert!(err.contains("unreachable"), "{err}");
    expect(3, &["--grpc", "--addr", &dead, "del", "k"]);
    // A bad input file is a usage error even with no server to talk to.
    let missing = dir.join("missing.npy");
    expect(2, &["--addr", &dead, "put", "k", missing.to_str().unwrap()]);
    expect(2, &["--addr", &dead, "load", missing.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A small checkpoint with several dtypes and file metadata.
fn checkpoint(path: &Path) -> HashMap<String, Vec<u8>> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let mut raw: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = HashMap::new();
    let f32s: Vec<u8> = (0..64 * 48)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    raw.insert("layer.0.weight".into(), (Dtype::F32, vec![64, 48], f32s));
    let bf16: Vec<u8> = (0..1000u16).flat_map(|i| i.to_le_bytes()).collect();
    raw.insert("layer.0.bias".into(), (Dtype::BF16, vec![1000], bf16));
    raw.insert(
        "step".into(),
        (Dtype::I64, vec![], 7i64.to_le_bytes().to_vec()),
    );
    raw.insert("mask".into(), (Dtype::BOOL, vec![3], vec![1, 0, 1]));
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
    std::fs::write(path, bytes).unwrap();
    raw.into_iter().map(|(k, (_, _, b))| (k, b)).collect()
}

#[test]
fn load_then_dump_gives_back_the_same_file() {
    let server = TestServer::start();
    let dir = scratch("ckpt");
    let file = dir.join("model.safetensors");
    let tensors = checkpoint(&file);
    let addr = server.fast();
    let out = expect(0, &["--addr", &addr, "load", file.to_str().unwrap()]);
    assert!(out.contains("loaded 4 tensors under \"model/\""), "{out}");
    // Each tensor under the prefix, byte for byte.
    for (name, bytes) in &tensors {
        let got = server.client(async |c| c.get(&format!("model/{name}")).await.unwrap());
        assert_eq!(got.expect(name).data().as_ref(), &bytes[..], "{name}");
    }

    let dumped = dir.join("out.safetensors");
    expect(
        0,
        &[
            "--addr",
            &addr,
            "dump",
            "model/",
            "-o",
            dumped.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&dumped).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // Loading again: refused, unless skipping what is cached.
    let err = expect(1, &["--addr", &addr, "load", file.to_str().unwrap()]);
    assert!(err.contains("already cached"), "{err}");
    let out = expect(
        0,
        &[
            "--addr",
            &addr,
            "load",
            file.to_str().unwrap(),
            "--skip-existing",
        ],
    );
    assert!(out.contains("4 already cached"), "{out}");

    // A tensor gone from the cache: dump fails naming it, leaves no file.
    server.client(async |c| c.delete("model/step").await.unwrap());
    let partial = dir.join("partial.safetensors");
    let err = expect(
        1,
        &[
            "--addr",
            &addr,
            "dump",
            "model/",
            "-o",
            partial.to_str().unwrap(),
        ],
    );
    assert!(err.contains("model/step"), "{err}");
    assert!(!partial.exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "no partial file left"
    );
    let err = expect(
        1,
        &[
            "--addr",
            &addr,
            "dump",
            "other/",
            "-o",
            partial.to_str().unwrap(),
        ],
    );
    assert!(err.contains("no checkpoint manifest"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_corrupt_checkpoint_is_refused_before_anything_is_put() {
    let server = TestServer::start();
    let dir = scratch("corrupt");
    let file = dir.join("bad.safetensors");
    checkpoint(&file);
    let good = std::fs::read(&file).unwrap();
    let addr = server.fast();
    let corruptions: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() - 5].to_vec()),
        ("empty", Vec::new()),
        ("huge header length", {
            let mut b = good.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("garbled header", {
            let mut b = good.clone();
            b[9] = b'!';
            b
        }),
    ];
    for (what, bytes) in corruptions {
        std::fs::write(&file, bytes).unwrap();
        let err = expect(
            2,
            &[
                "--addr",
                &addr,
                "load",
                file.to_str().unwrap(),
                "--prefix",
                "bad/",
            ],
        );
        assert!(
            err.contains("not a valid safetensors file"),
            "{what}: {err}"
        );
    }
    let missing = dir.join("missing.safetensors");
    expect(2, &["--addr", &addr, "load", missing.to_str().unwrap()]);
    let entries = server.client(async |c| c.stats().await.unwrap().entries);
    assert_eq!(entries, 0, "nothing was put");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_cluster_from_a_toml_file_loads_and_reports_per_node() {
    let servers = [TestServer::start(), TestServer::start()];
    let dir = scratch("cluster");
    let nodes = dir.join("cluster.toml");
    std::fs::write(
        &nodes,
        format!(
            "nodes = [\"{}\", \"{}\"]\nreplicas = 2\n",
            servers[0].fast(),
            servers[1].fast()
        ),
    )
    .unwrap();
    let file = dir.join("ckpt.safetensors");
    checkpoint(&file);
    let nodes = nodes.to_str().unwrap();
    expect(
        0,
        &[
            "--nodes",
            nodes,
            "load",
            file.to_str().unwrap(),
            "--prefix",
            "c/",
        ],
    );
    // Both replicas hold all four tensors and the manifest.
    for server in &servers {
        assert_eq!(server.client(async |c| c.stats().await.unwrap().entries), 5);
    }
    let stats = expect(0, &["--nodes", nodes, "stats"]);
    let rows: Vec<&str> = stats.lines().collect();
    assert_eq!(rows.len(), 4, "header, two nodes, total: {stats}");
    assert!(
        rows[3].starts_with("total") && rows[3].split_whitespace().nth(1) == Some("10"),
        "{stats}"
    );
    let dumped = dir.join("out.safetensors");
    expect(
        0,
        &[
            "--nodes",
            nodes,
            "dump",
            "c/",
            "-o",
            dumped.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&dumped).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // A bad cluster file: usage, naming the line.
    std::fs::write(
        dir.join("bad.toml"),
        "nodes = [\"a:1\"]\nreplicas = \"two\"\n",
    )
    .unwrap();
    let err = expect(
        2,
        &["--nodes", dir.join("bad.toml").to_str().unwrap(), "stats"],
    );
    assert!(err.contains("line 2"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stats_show_the_disk_tier_when_there_is_one() {
    let dir = scratch("stats-disk");
    let plain = TestServer::start();
    let stats = expect(0, &["--addr", &plain.fast(), "stats"]);
    assert!(!stats.contains("disk:"), "{stats}");
    let server = TestServer::start_with(Some(redstone::disk::DiskConfig::new(
        dir.join("tier"),
        64 << 20,
    )));
    let stats = expect(0, &["--addr", &server.fast(), "stats"]);
    let disk = stats
        .lines()
        .find(|l| l.starts_with("disk:"))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(
        disk.contains("0 tensors") && disk.contains("writable"),
        "{disk}"
    );
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
