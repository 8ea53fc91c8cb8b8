//! A server for laneya's wire format: netstring-framed JSON.
//!
//! A request `{"type": "request", "key": 1, "user": "ann", "action": "move",
//! "data": {"dx": 1, "dy": 0}}` gets a response `{"type": "response", "key":
//! 1, "status": "success", "data": {...}}` with status `success`, `invalid`
//! (malformed request), `illegal` (against the rules) or `internal`; what an
//! action changes goes to every client as `{"type": "update", ...}`.
//!
//! ```text
//! cargo run --example laneya -- --listen 127.0.0.1:1248 --plain
//! printf '78:{"type":"request","key":1,"user":"ann","action":"move","data":{"dx":1,"dy":0}},' | nc 127.0.0.1 1248
//! ```

use clap::Parser;
use ringgate::gate::embedded::{Builder, Event, Handle};
use ringgate::proto::frame::FrameFormat;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "laneya's netstring JSON protocol on ringgate")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1248")]
    listen: SocketAddr,
    /// Shards (io_uring threads).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Plain TCP instead of SCP.
    #[arg(long)]
    plain: bool,
}

/// Why a request failed, as laneya's statuses say it.
enum Refusal {
    Invalid(&'static str),
    Illegal(&'static str),
}

/// The game: users walk on a 10×10 board, one step at a time.
#[derive(Default)]
struct Game {
    positions: HashMap<String, (i64, i64)>,
}

impl Game {
    fn request(
        &mut self,
        user: &str,
        action: &str,
        data: &Value,
        room: &Handle,
    ) -> Result<Value, Refusal> {
        match action {
            "ping" => Ok(json!({})),
            "move" => {
                let (Some(dx), Some(dy)) = (data["dx"].as_i64(), data["dy"].as_i64()) else {
                    return Err(Refusal::Invalid("move needs integer dx and dy"));
                };
                if dx.abs() > 1 || dy.abs() > 1 {
                    return Err(Refusal::Illegal("one step at a time"));
                }
                let pos = self.positions.entry(user.to_string()).or_default();
                let next = (pos.0 + dx, pos.1 + dy);
                if !(0..10).contains(&next.0) || !(0..10).contains(&next.1) {
                    return Err(Refusal::Illegal("off the board"));
                }
                *pos = next;
                let update = json!({"type": "update", "action": "moved",
                                    "data": {"user": user, "x": next.0, "y": next.1}});
                let _ = room.broadcast(update.to_string());
                Ok(json!({"x": next.0, "y": next.1}))
            }
            _ => Err(Refusal::Invalid("unknown action")),
        }
    }

    /// One frame in, one response out.
    fn handle(&mut self, frame: &[u8], room: &Handle) -> Value {
        let msg: Value = serde_json::from_slice(frame).unwrap_or(Value::Null);
        let key = msg["key"].clone();
        let (user, action) = (msg["user"].as_str(), msg["action"].as_str());
        let result = match (msg["type"].as_str(), user, action, msg["data"].is_object()) {
            (Some("request"), Some(user), Some(action), true) => {
                self.request(user, action, &msg["data"], room)
            }
            _ => Err(Refusal::Invalid(
                "expected a request with key, user, action and data",
            )),
        };
        let (status, data) = match result {
            Ok(data) => ("success", data),
            Err(Refusal::Invalid(m)) => ("invalid", json!({"message": m})),
            Err(Refusal::Illegal(m)) => ("illegal", json!({"message": m})),
        };
        json!({"type": "response", "key": key, "status": status, "data": data})
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // One worker: the game state lives on one thread, as in laneya's server.
    let (room, mut receivers) = Builder::new(args.listen)
        .shards(args.shards)
        .scp(!args.plain)
        .framing(FrameFormat::Netstring)
        .max_frame(64 * 1024)
        .start()?;
    println!("laneya on {}", room.local_addr());
    let events = receivers.remove(0);
    let mut game = Game::default();
    while let Some(ev) = events.recv() {
        if let Event::Frame { session, data } = ev {
            // A handler bug must not take the server down: answer `internal`.
            let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                game.handle(&data, &room)
            }))
            .unwrap_or_else(
                |_| json!({"type": "response", "key": null, "status": "internal", "data": {}}),
            );
            let _ = room.send(session, response.to_string());
        }
    }
    Ok(())
}
