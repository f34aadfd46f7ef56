//! Computes the version compiled into the binaries.
//!
//! `HERALD_BUILD_VERSION` (set by scripts/image.sh to the image tag
//! `<git-sha>-<env>-<build>`) wins; otherwise the package version with the
//! git commit of the checkout (`0.1.0+1a2b3c4d5e6f`); outside a git checkout,
//! the package version alone. `HERALD_BUILD_REVISION` names the commit where
//! the build has no `.git` (the image build).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_BUILD_VERSION");
    println!("cargo:rerun-if-env-changed=HERALD_BUILD_REVISION");
    let package = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let revision = non_empty_env("HERALD_BUILD_REVISION")
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // A new commit or checkout moves HEAD or the ref it names.
        // Only files that exist: cargo reruns on every build for a missing one.
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
        for file in ["HEAD", "packed-refs"]
            .into_iter()
            .chain(head_ref.as_deref())
        {
            let path = std::path::Path::new(&git_dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let version = match (non_empty_env("HERALD_BUILD_VERSION"), &revision) {
        (Some(tag), _) => tag,
        (None, Some(sha)) => format!("{package}+{sha}"),
        (None, None) => package,
    };
    println!("cargo:rustc-env=HERALD_VERSION={version}");
    println!(
        "cargo:rustc-env=HERALD_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
}

fn non_empty_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Runs git and returns its trimmed output, or None where git or the checkout is missing.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
