//! The generated log: a deterministic, realistic access log in the combined log format,
//! with a few broken lines and a few chunks of binary garbage.

use super::*;

/// SplitMix64: a tiny, good-enough PRNG, so that the log is the same everywhere.
pub(super) struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Approximately standard normal (Irwin–Hall of 4 uniforms, rescaled).
    fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

/// What a kind of request looks like: its weight in the traffic, its path, its usual
/// latency and response size.
pub(super) struct Route {
    weight: u32,
    method: &'static str,
    path: fn(&mut Rng) -> String,
    ok: u16,
    median_ms: f64,
    bytes: u64,
}

#[rustfmt::skip]
pub(super) const ROUTES: &[Route] = &[
    Route { weight: 180, method: "GET", path: |r| format!("/api/products/{}", 1000 + r.below(5000)), ok: 200, median_ms: 18.0, bytes: 2_400 },
    Route { weight: 120, method: "GET", path: |r| format!("/api/products?page={}&sort=price", 1 + r.below(40)), ok: 200, median_ms: 42.0, bytes: 18_000 },
    Route { weight: 110, method: "GET", path: |r| format!("/api/users/{}", 1 + r.below(90_000)), ok: 200, median_ms: 12.0, bytes: 900 },
    Route { weight: 60, method: "GET", path: |r| format!("/api/users/{}/orders", 1 + r.below(90_000)), ok: 200, median_ms: 55.0, bytes: 6_500 },
    Route { weight: 35, method: "PUT", path: |r| format!("/api/users/{}", 1 + r.below(90_000)), ok: 204, median_ms: 30.0, bytes: 0 },
    Route { weight: 70, method: "GET", path: |r| format!("/api/orders/{}", uuid(r)), ok: 200, median_ms: 25.0, bytes: 3_100 },
    Route { weight: 40, method: "POST", path: |_| "/api/orders".into(), ok: 201, median_ms: 140.0, bytes: 420 },
    Route { weight: 45, method: "POST", path: |r| format!("/api/cart/items?ref={}", r.below(100)), ok: 201, median_ms: 35.0, bytes: 310 },
    Route { weight: 20, method: "DELETE", path: |r| format!("/api/cart/items/{}", 1 + r.below(400_000)), ok: 204, median_ms: 22.0, bytes: 0 },
    Route { weight: 75, method: "GET", path: |r| format!("/api/search?q={}", r.pick(&["shoes", "red+dress", "usb-c", "lamp", "tent"])), ok: 200, median_ms: 160.0, bytes: 12_000 },
    Route { weight: 25, method: "POST", path: |_| "/api/login".into(), ok: 200, median_ms: 90.0, bytes: 350 },
    Route { weight: 90, method: "GET", path: |r| r.pick(&["/static/js/app.js", "/static/css/site.css", "/favicon.ico"]).to_string(), ok: 200, median_ms: 2.0, bytes: 48_000 },
    Route { weight: 50, method: "GET", path: |_| "/".into(), ok: 200, median_ms: 35.0, bytes: 21_000 },
    Route { weight: 60, method: "GET", path: |_| "/healthz".into(), ok: 200, median_ms: 1.0, bytes: 2 },
    Route { weight: 8, method: "GET", path: |_| "/metrics".into(), ok: 200, median_ms: 6.0, bytes: 14_000 },
    Route { weight: 6, method: "GET", path: |r| r.pick(&["/wp-login.php", "/.env", "/admin/config.php", "/.git/config"]).to_string(), ok: 404, median_ms: 3.0, bytes: 153 },
];

pub(super) const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    "python-requests/2.31.0",
];

pub(super) fn uuid(r: &mut Rng) -> String {
    let (a, b) = (r.next_u64(), r.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// `14/Mar/2024:06:25:01 +0000` for a Unix time in seconds (UTC).
pub(super) fn clf_time(out: &mut String, unix: u64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// A deterministic access log of `lines` lines. About 0.3% of the lines are broken the
/// way real logs break (cut by a crash, two writes interleaved, an empty line), and every
/// 100th chunk, from the 8th on, is binary junk (a compressed log appended by mistake).
pub(super) fn generate_log(lines: usize, seed: u64) -> String {
    let mut r = Rng(seed);
    let total_weight: u64 = ROUTES.iter().map(|x| u64::from(x.weight)).sum();
    let clients: Vec<String> = (0..3_000)
        .map(|i| {
            if i % 50 == 0 {
                format!("2001:db8:{:x}::{:x}", r.below(0xffff), r.below(0xffff))
            } else {
                let first = *r.pick(&[
                    31u64, 46, 66, 77, 81, 89, 91, 103, 109, 142, 151, 176, 185, 188, 193, 212, 217,
                ]);
                format!(
                    "{first}.{}.{}.{}",
                    r.below(256),
                    r.below(256),
                    1 + r.below(254)
                )
            }
        })
        .collect();
    let mut out = String::with_capacity(lines * 230);
    let mut line = String::with_capacity(512);
    let mut now_ms: u64 = 1_710_374_400_000; // 2024-03-14 00:00:00 UTC
    for i in 0..lines {
        line.clear();
        now_ms += r.below(500);
        if (i / CHUNK) % 100 == 7 {
            let len = 20 + r.below(100);
            line.extend(
                (0..len).map(|_| char::from_u32(0x21 + r.below(0x5e) as u32).unwrap_or('?')),
            );
            line.insert_str(0, "\u{1f}\u{fffd}\u{8}");
            out.push_str(&line);
            out.push('\n');
            continue;
        }
        // A client: a few are very busy (Zipf-like), most come now and then.
        let u = r.unit();
        let mut route = &ROUTES[0];
        let mut w = r.below(total_weight);
        for x in ROUTES {
            if w < u64::from(x.weight) {
                route = x;
                break;
            }
            w -= u64::from(x.weight);
        }
        let path = (route.path)(&mut r);
        let (ip, agent) = if path == "/healthz" {
            ("10.0.3.17", "kube-probe/1.29")
        } else {
            (
                clients[(u * u * u * clients.len() as f64) as usize].as_str(),
                *r.pick(AGENTS),
            )
        };
        let mut latency = route.median_ms * (0.55 * r.normal()).exp();
        let mut status = route.ok;
        let mut bytes = (route.bytes as f64 * (0.8 + 0.4 * r.unit())) as u64;
        if r.chance(0.01) {
            latency *= 8.0; // a slow one: a lock, a cold cache, a GC pause
        }
        if route.method == "GET" && route.ok == 200 && path.starts_with("/static") && r.chance(0.4)
        {
            (status, bytes) = (304, 0);
        } else if route.method == "POST" && path == "/api/login" && r.chance(0.15) {
            status = 401;
        } else if path.starts_with("/api/") && r.chance(0.004) {
            (status, bytes) = (429, 58);
        } else if path.starts_with("/api/users") && route.method == "GET" && r.chance(0.02) {
            (status, bytes) = (404, 47);
        }
        if r.chance(0.003) {
            // Upstream trouble: a quick 502/503 or a slow 504.
            (status, bytes) = *r.pick(&[(502, 157), (503, 190), (504, 167)]);
            latency = if status == 504 {
                30_000.0
            } else {
                latency.min(5.0)
            };
        }
        let referer = if r.chance(0.3) {
            "https://shop.example.com/"
        } else {
            "-"
        };
        let user = if path.starts_with("/api/") && r.chance(0.2) {
            "alice"
        } else {
            "-"
        };
        let _ = write!(line, "{ip} - {user} [");
        clf_time(&mut line, now_ms / 1000);
        let _ = write!(
            line,
            "] \"{} {path} HTTP/1.1\" {status} {bytes} \"{referer}\" \"{agent}\" {}",
            route.method,
            latency.round().max(0.0) as u32
        );
        if r.chance(0.002) {
            // A TLS client talking to the plain-HTTP port: a valid line for a bad request.
            line.clear();
            let _ = write!(line, "{ip} - - [");
            clf_time(&mut line, now_ms / 1000);
            line.push_str("] \"\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xFC\\x03\\x03\" 400 157 \"-\" \"-\" 0");
        }
        match r.below(1000) {
            0 | 1 => line.truncate(r.below(line.len() as u64 / 2) as usize), // cut by a crash
            2 => line.truncate(0),                                           // an empty line
            3 => {
                // Two writes interleaved.
                let cut = 10 + r.below(line.len() as u64 / 2) as usize;
                line.truncate(line.floor_char_boundary(cut));
                line.push_str("185.12.4.9 - - [14/Mar/2024");
            }
            _ => {}
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
