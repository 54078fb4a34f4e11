//! The container images, built without an engine: `hack/images` packs the binaries this
//! test run built into OCI archives, and each archive is read back as a runtime would.
//! Its blobs match their digests, its config runs the binary as a non-root user with
//! the OCI labels, nothing in its root is writable by that user but /tmp, and the binary
//! answers `--help` with only the libraries and loader the image carries (in a chroot
//! as the image's user when the test runs as root, as CI does).
//! `images/Dockerfile` must describe the same images.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tanks_testkit::process::workspace_binary;

const IMAGES: [&str; 5] = [
    "authserver",
    "gameserver",
    "operator",
    "tanks-pod-runner",
    "demo-bot",
];
const LABELS: [&str; 5] = ["title", "description", "source", "version", "revision"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A scratch folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `sha256:HEX` of a blob -> its path in the layout.
fn blob(layout: &Path, digest: &Value) -> PathBuf {
    let digest = digest.as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The sha256 of each file (coreutils' `sha256sum`), in order.
fn sha256(files: &[PathBuf], gunzip: bool) -> Vec<String> {
    if gunzip {
        return files
            .iter()
            .map(|f| {
                let out = run(Command::new("sh")
                    .arg("-c")
                    .arg("gzip -dc \"$1\" | sha256sum")
                    .arg("sh")
                    .arg(f));
                String::from_utf8_lossy(&out.stdout)[..64].to_string()
            })
            .collect();
    }
    let out = run(Command::new("sha256sum").args(files));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l[..64].to_string())
        .collect()
}

/// Every folder under `root` that holds a shared library.
fn library_dirs(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let mut has_lib = false;
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            library_dirs(root, &path, found);
        } else if entry.file_name().to_string_lossy().contains(".so") {
            has_lib = true;
        }
    }
    if has_lib && dir != root {
        found.push(dir.to_path_buf());
    }
}

/// Checks one archive; returns the image's description label.
fn check_image(name: &str, archive: &Path, scratch: &Path, as_root: bool) -> String {
    let layout = scratch.join(format!("{name}-layout"));
    std::fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));

    // The layout: one manifest, tagged as hack/images promises.
    let oci_layout = read_json(&layout.join("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index = read_json(&layout.join("index.json"));
    let entries = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(entries.len(), 1, "{name}: one manifest in {index}");
    let version = env!("CARGO_PKG_VERSION");
    let reference = format!("tanks/{name}:{version}");
    assert_eq!(
        entries[0]["annotations"]["io.containerd.image.name"],
        format!("docker.io/{reference}")
    );
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        version
    );
    let docker = read_json(&layout.join("manifest.json"));
    assert_eq!(docker[0]["RepoTags"][0], reference.as_str());

    // Every blob is what its name says.
    let blobs: Vec<PathBuf> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("blob").path())
        .collect();
    for (path, sum) in blobs.iter().zip(sha256(&blobs, false)) {
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            sum,
            "{name}: blob digest"
        );
    }

    let manifest = read_json(&blob(&layout, &entries[0]["digest"]));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = read_json(&blob(&layout, &manifest["config"]["digest"]));
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{name}: one layer");
    let layer = blob(&layout, &layers[0]["digest"]);
    assert_eq!(
        std::fs::metadata(&layer).unwrap().len(),
        layers[0]["size"].as_u64().unwrap()
    );
    let diff_id = &sha256(std::slice::from_ref(&layer), true)[0];
    assert_eq!(config["rootfs"]["diff_ids"][0], format!("sha256:{diff_id}"));
    assert_eq!(
        docker[0]["Layers"][0],
        format!(
            "blobs/sha256/{}",
            layer.file_name().unwrap().to_string_lossy()
        )
    );

    // The config: non-root, the binary as entrypoint, the labels.
    assert_eq!(config["os"], "linux");
    let cfg = &config["config"];
    let user = cfg["User"].as_str().expect("config.User");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("{name}: User {user:?} is not numeric"));
    assert_ne!(uid, 0, "{name} runs as root");
    let entrypoint = format!("/usr/local/bin/{name}");
    assert_eq!(cfg["Entrypoint"], serde_json::json!([entrypoint]));
    let labels = cfg["Labels"].as_object().expect("config.Labels");
    for key in LABELS {
        let value = labels
            .get(&format!("org.opencontainers.image.{key}"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            !value.is_empty(),
            "{name}: label {key} missing in {labels:?}"
        );
    }
    assert_eq!(labels["org.opencontainers.image.title"], name);
    assert_eq!(labels["org.opencontainers.image.version"], version);

    // The root: owned by root, writable by nobody else but in /tmp (sticky).
    let root = scratch.join(format!("{name}-root"));
    std::fs::create_dir_all(&root).unwrap();
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&layer));
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, path) = (fields[0], fields[1], fields[fields.len() - 1]);
        assert_eq!(owner, "0/0", "{name}: {line}");
        let group_or_other_write = mode.as_bytes()[5] == b'w' || mode.as_bytes()[8] == b'w';
        assert!(
            !group_or_other_write || (path == "tmp/" && mode == "drwxrwxrwt"),
            "{name}: writable by the image's user: {line}"
        );
    }
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&root));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string())),
        "{name}: no passwd entry for {uid}:\n{passwd}"
    );
    let bin = root.join(entrypoint.trim_start_matches('/'));
    let mode = std::fs::metadata(&bin)
        .expect("the binary")
        .permissions()
        .mode();
    assert_eq!(mode & 0o755, 0o755, "{name}: binary mode {mode:o}");

    // The binary runs on what the image carries: its loader, its libraries.
    let loader = std::fs::read_dir(root.join("lib64"))
        .expect("lib64: the dynamic loader")
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ld-linux")
        })
        .expect("the dynamic loader in lib64");
    let mut dirs = Vec::new();
    library_dirs(&root, &root, &mut dirs);
    let library_path = std::env::join_paths(&dirs).unwrap();
    let list = run(Command::new(&loader)
        .arg("--library-path")
        .arg(&library_path)
        .arg("--list")
        .arg(&bin));
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        if let Some((_, path)) = line.split_once(" => ") {
            assert!(
                path.trim_start().starts_with(root.to_str().unwrap()),
                "{name}: a library from outside the image: {line}"
            );
        }
    }
    let help = run(Command::new(&loader)
        .env_clear()
        .arg("--library-path")
        .arg(&library_path)
        .arg(&bin)
        .arg("--help"));
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage"),
        "{name} --help: {}",
        String::from_utf8_lossy(&help.stdout)
    );
    if as_root {
        // As a container would: this root only, the image's user, no ld.so.cache.
        let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("chroot"))
            .find(|path| path.exists())
            .expect("chroot (coreutils) on PATH");
        let env = cfg["Env"].as_array().expect("config.Env").iter().map(|kv| {
            kv.as_str()
                .and_then(|kv| kv.split_once('='))
                .expect("Env entries are KEY=VALUE")
        });
        let help = run(Command::new(chroot)
            .env_clear()
            .envs(env)
            .arg(format!("--userspec={user}"))
            .arg(&root)
            .arg(&entrypoint)
            .arg("--help"));
        assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
    }

    labels["org.opencontainers.image.description"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `images/Dockerfile`'s stage for `name`: its entrypoint and description must be the
/// archive's, its base the same non-root user.
fn check_dockerfile(dockerfile: &str, name: &str, description: &str) {
    let start = format!("FROM base AS {name}\n");
    let stage = dockerfile
        .split_once(&start)
        .map(|(_, rest)| rest.split("\nFROM ").next().unwrap())
        .unwrap_or_else(|| panic!("images/Dockerfile has no stage {name}"));
    assert!(
        stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{name}\"]")),
        "images/Dockerfile {name}: entrypoint"
    );
    assert!(
        stage.contains(&format!(
            "org.opencontainers.image.description=\"{description}\""
        )),
        "images/Dockerfile {name}: description differs from hack/images' ({description:?})"
    );
}

#[test]
fn hack_images_packs_each_binary_to_run_as_non_root_on_its_own_libraries() {
    let bin_dir = workspace_binary(IMAGES[0])
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for name in IMAGES {
        workspace_binary(name);
    }
    let scratch =
        TempDir(std::env::temp_dir().join(format!("tanks-images-{}", std::process::id())));
    let out_dir = scratch.0.join("out");
    let built = run(Command::new("bash")
        .current_dir(repo_root())
        .arg("hack/images")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out_dir)
        .args(IMAGES));
    let stdout = String::from_utf8_lossy(&built.stdout).to_string();
    let lines: BTreeMap<&str, &str> = IMAGES
        .iter()
        .map(|name| {
            let reference = format!("tanks/{name}:{}", env!("CARGO_PKG_VERSION"));
            let line = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(reference.as_str()))
                .unwrap_or_else(|| {
                    panic!("hack/images printed no line for {reference}:\n{stdout}")
                });
            (*name, line)
        })
        .collect();
    assert_eq!(
        stdout.lines().count(),
        IMAGES.len(),
        "one line per image:\n{stdout}"
    );

    let as_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let dockerfile = std::fs::read_to_string(repo_root().join("images/Dockerfile")).unwrap();
    assert!(dockerfile.contains("USER 65532:65532"));
    for name in IMAGES {
        let archive = out_dir.join(format!("{name}.tar"));
        let description = check_image(name, &archive, &scratch.0, as_root);
        check_dockerfile(&dockerfile, name, &description);
        // The printed digest is the manifest's, as a registry would show it.
        let index = read_json(&scratch.0.join(format!("{name}-layout/index.json")));
        let digest = index["manifests"][0]["digest"].as_str().unwrap();
        assert!(lines[name].contains(digest), "{name}: {}", lines[name]);
        assert!(
            lines[name].contains("MiB"),
            "{name}: size in {}",
            lines[name]
        );
    }
}
