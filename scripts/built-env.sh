# Sourced (with $top set to the checkout) by the scripts that run programs
# against the build tree: the loader finds target/release's library (build.rs
# links the soname the programs record there), and tests find msb-devrelay.
export LD_LIBRARY_PATH="$top/target/release${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MSB_DEVRELAY="$top/target/release/msb-devrelay"
