//! Links librrd (Debian: `librrd-dev`), the fallback writer when rrdcached
//! is not reachable. A missing library is reported here, with the package
//! to install, rather than as a bare linker error.

use std::path::Path;

const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RRD_LIB_DIR");
    if let Ok(dir) = std::env::var("RRD_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    } else if !LIB_DIRS
        .iter()
        .any(|d| Path::new(d).join("librrd.so").exists())
    {
        println!(
            "cargo:warning=librrd.so not found in {LIB_DIRS:?}: install it with \
             `apt-get install -y librrd-dev` (or set RRD_LIB_DIR)"
        );
    }
    println!("cargo:rustc-link-lib=dylib=rrd");
}
