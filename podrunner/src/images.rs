//! Images as local binaries: there is no image to pull, so each image stands for a
//! binary (its entrypoint) or a folder of them (its `PATH`).
//!
//! A rule `IMAGE=PATH` (`--image`, repeatable, first match wins) matches an image by
//! repository, ignoring the registry, the tag and the digest unless the rule names a
//! tag: `tanks/gameserver=/opt/bin/gameserver` matches
//! `registry.example/tanks/gameserver:1.2`. PATH is either a file, the entrypoint, whose
//! folder is also searched for `command`; or a folder, searched for `command` and for
//! a binary named like the image. An image no rule matches falls back to the binary
//! named like its last path component in the runner's `--bin-dir`s, then `PATH`: so
//! the project's `tanks/<name>:<tag>` images are the workspace's `target/*/<name>`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRule {
    /// Repository without registry (`tanks/gameserver`), with `:tag` if the rule names one.
    pub image: String,
    pub path: PathBuf,
}

impl std::str::FromStr for ImageRule {
    type Err = String;

    /// `IMAGE=PATH`, e.g. `tanks/redis-backup=backup/`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (image, path) = s
            .split_once('=')
            .ok_or_else(|| format!("expected IMAGE=PATH, got {s:?}"))?;
        if image.is_empty() || path.is_empty() {
            return Err(format!("expected IMAGE=PATH, got {s:?}"));
        }
        let reference = Reference::parse(image);
        let image = match reference.tag {
            Some(tag) => format!("{}:{tag}", reference.repository),
            None => reference.repository,
        };
        Ok(Self {
            image,
            path: PathBuf::from(path),
        })
    }
}

/// An image reference, split the way matching needs it.
#[derive(Debug, PartialEq)]
struct Reference {
    /// Without registry; Docker Hub's `library/` dropped.
    repository: String,
    tag: Option<String>,
}

impl Reference {
    fn parse(image: &str) -> Self {
        let image = image.split('@').next().unwrap_or(image);
        let (name, tag) = match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_owned())),
            _ => (image, None),
        };
        // The first component is a registry when it looks like a host.
        let name = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                rest
            }
            _ => name,
        };
        let name = name.strip_prefix("library/").unwrap_or(name);
        Self {
            repository: name.to_owned(),
            tag,
        }
    }

    /// `tanks/gameserver` → `gameserver`.
    fn base_name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }
}

/// What an image resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The binary run when the container has no `command`.
    pub entrypoint: Option<PathBuf>,
    /// Folders searched first for `command` and put first on the process's `PATH`.
    pub path: Vec<PathBuf>,
}

/// The binary or folder `image` stands for.
pub fn resolve(image: &str, rules: &[ImageRule], bin_dirs: &[PathBuf]) -> Image {
    let reference = Reference::parse(image);
    let rule = rules.iter().find(|r| match r.image.split_once(':') {
        Some((repo, tag)) => repo == reference.repository && reference.tag.as_deref() == Some(tag),
        None => r.image == reference.repository,
    });
    match rule {
        Some(rule) if rule.path.is_dir() => Image {
            entrypoint: Some(rule.path.join(reference.base_name())).filter(|p| p.is_file()),
            path: vec![rule.path.clone()],
        },
        Some(rule) => Image {
            entrypoint: Some(rule.path.clone()),
            path: rule
                .path
                .parent()
                .map(Path::to_path_buf)
                .into_iter()
                .collect(),
        },
        None => Image {
            entrypoint: find(reference.base_name(), bin_dirs),
            path: Vec::new(),
        },
    }
}

/// `program` as a file: itself when it is an existing absolute path, else its file
/// name looked up in `dirs`, then the runner's `PATH`.
pub fn find(program: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let name = Path::new(program);
    if name.is_absolute() && name.is_file() {
        return Some(name.to_owned());
    }
    let file = name.file_name()?;
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .chain(path_dirs.iter())
        .map(|dir| dir.join(file))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_drop_registry_tag_and_digest() {
        for (image, repo, tag) in [
            (
                "registry.example/tanks/gameserver:1.2",
                "tanks/gameserver",
                Some("1.2"),
            ),
            ("tanks/gameserver", "tanks/gameserver", None),
            (
                "localhost:5000/tanks/operator:0.1.0",
                "tanks/operator",
                Some("0.1.0"),
            ),
            ("ghcr.io/x/authserver@sha256:abc", "x/authserver", None),
            (
                "docker.io/library/redis:7.4-alpine",
                "redis",
                Some("7.4-alpine"),
            ),
            ("redis", "redis", None),
        ] {
            let r = Reference::parse(image);
            assert_eq!(
                (r.repository.as_str(), r.tag.as_deref()),
                (repo, tag),
                "{image}"
            );
        }
        assert_eq!(
            Reference::parse("registry.example/tanks/gameserver:1.2").base_name(),
            "gameserver"
        );
    }

    #[test]
    fn rules_match_by_repository_and_by_tag_when_named() {
        let dir = std::env::temp_dir().join(format!("images-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("gameserver");
        std::fs::write(&bin, "").unwrap();
        let rules: Vec<ImageRule> = [
            "tanks/gameserver:2.0=/nowhere/new".to_owned(),
            format!("registry.example/tanks/gameserver={}", bin.display()),
            format!("tanks/tools={}", dir.display()),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let image = resolve("tanks/gameserver:1.0", &rules, &[]);
        assert_eq!(image.entrypoint.as_deref(), Some(bin.as_path()));
        assert_eq!(image.path, vec![dir.clone()]);
        let image = resolve("tanks/gameserver:2.0", &rules, &[]);
        assert_eq!(image.entrypoint, Some(PathBuf::from("/nowhere/new")));
        // A folder: the command is looked up there; no binary named `tools` in it.
        let image = resolve("example.org/tanks/tools:3", &rules, &[]);
        assert_eq!((image.entrypoint, image.path), (None, vec![dir.clone()]));
        // No rule: the image's last component in the bin dirs.
        let image = resolve("other/gameserver:9", &[], std::slice::from_ref(&dir));
        assert_eq!(image.entrypoint.as_deref(), Some(bin.as_path()));
        assert!("tanks/x".parse::<ImageRule>().is_err());
        assert!("=/x".parse::<ImageRule>().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
