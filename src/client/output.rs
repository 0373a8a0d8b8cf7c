//! Printing for the client commands: money in yuan, CSV (RFC 4180).

/// Formats micro-units as yuan with six decimals, exactly (`1_500_000` → `1.500000`).
pub fn fmt_micros(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// One CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180).
pub fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Prints a header and rows as CSV on stdout.
pub fn print_csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    println!("{}", header.join(","));
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| csv_field(f)).collect();
        println!("{}", fields.join(","));
    }
}
