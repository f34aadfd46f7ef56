//! The version compiled into Herald's binaries (see build.rs): what
//! `--version` prints and what the `herald_build_info` metric says, so every
//! running pod can be traced to the commit and image it came from.

/// The image tag (`<git-sha>-<env>-<build>`) the binary was built for, or
/// `<package version>+<git sha>` for a build from a checkout.
pub const VERSION: &str = env!("HERALD_VERSION");

/// The git commit the binary was built from, or `unknown`.
pub const REVISION: &str = env!("HERALD_REVISION");

/// Registers `herald_build_info{version,revision}`, a gauge that is always 1:
/// dashboards join on it to show which version each pod runs.
pub fn register(registry: &prometheus::Registry) -> prometheus::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "herald_build_info",
            "The version and git revision this process was built from; always 1.",
        ),
        &["version", "revision"],
    )?;
    info.with_label_values(&[VERSION, REVISION]).set(1);
    registry.register(Box::new(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_is_exported_with_the_compiled_version() {
        let registry = prometheus::Registry::new();
        register(&registry).expect("registers once");
        let families = registry.gather();
        let metric = &families[0].get_metric()[0];
        assert_eq!(families[0].name(), "herald_build_info");
        assert_eq!(metric.get_gauge().get_value(), 1.0);
        assert!(metric.get_label().iter().any(|l| l.value() == VERSION));
        assert!(!VERSION.is_empty());
    }
}
