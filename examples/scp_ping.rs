//! Opens an SCP session, echoes a message, drops the connection, resumes,
//! and echoes again: a quick check of a gate by hand.
//!
//! Usage: `cargo run --example scp_ping -- ADDR`

use ringgate::client::{ClientOptions, ScpClient};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1248".into())
        .parse()?;
    let mut c = ScpClient::connect(addr, ClientOptions::default())?;
    println!("session {} open", c.id());
    let mut buf = [0u8; 5];
    c.write_all(b"hello")?;
    c.read_exact(&mut buf)?;
    println!("echo: {}", String::from_utf8_lossy(&buf));
    c.abort();
    c.resume()?;
    c.write_all(b"again")?;
    c.read_exact(&mut buf)?;
    println!("after resume: {}", String::from_utf8_lossy(&buf));
    Ok(())
}
