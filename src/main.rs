//! The `ringgate` command line.

fn main() {
    println!(
        "ringgate {}: the protocol core (proto/) is built; `serve`, `echo` and `loadgen` are not yet available",
        env!("CARGO_PKG_VERSION")
    );
}
