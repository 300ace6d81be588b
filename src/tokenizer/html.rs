//! Python's `html.unescape`, which open_clip runs twice on every text (and ftfy once on numeric references).

use super::html_entities::HTML5;

/// Python's `html.unescape`: named references from the HTML5 table (the longest known prefix of a name without
/// `;`, as browsers read legacy forms), decimal and hex references with HTML5's replacements.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (replacement, used) = charref(rest);
        out.push_str(&replacement);
        rest = &rest[used..];
    }
    out.push_str(rest);
    out
}

/// One reference at the start of `s` (which starts with '&'): its replacement and the bytes it used.
fn charref(s: &str) -> (String, usize) {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits
            .chars()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if len > 0 {
            let prefix = 2 + usize::from(hex);
            let semi = usize::from(digits[len..].starts_with(';'));
            let value =
                u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
            return (numeric(value), prefix + len + semi);
        }
        return ("&".into(), 1);
    }
    // Python's pattern: up to 32 characters that are not whitespace, '<', '&', '#' or ';', then an optional ';'.
    let name_len: usize = body
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return ("&".into(), 1);
    }
    let with_semi = name_len + usize::from(body[name_len..].starts_with(';'));
    let name = &body[..with_semi];
    if let Some(v) = entity(name) {
        return (v.to_string(), 1 + with_semi);
    }
    // The longest prefix that names a legacy (no ';') reference, the rest kept as text.
    let mut ends: Vec<usize> = name
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 1)
        .collect();
    ends.reverse();
    for end in ends {
        if let Some(v) = entity(&name[..end]) {
            return (format!("{v}{}", &name[end..]), 1 + with_semi);
        }
    }
    (format!("&{name}"), 1 + with_semi)
}

/// The HTML5 reference named `name` (with its `;` if it has one).
pub fn entity(name: &str) -> Option<&'static str> {
    HTML5
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| HTML5[i].1)
}

/// A numeric reference's replacement, as Python's `html._replace_charref`.
fn numeric(n: u32) -> String {
    // Windows-1252's characters for the C1 range, as HTML5 maps those references.
    const C1: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{0192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{02c6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{8d}',
        '\u{017d}', '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}',
        '\u{2013}', '\u{2014}', '\u{02dc}', '\u{2122}', '\u{0161}', '\u{203a}', '\u{0153}',
        '\u{9d}', '\u{017e}', '\u{0178}',
    ];
    match n {
        0x00 => "\u{fffd}".into(),
        0x0d => "\r".into(),
        0x80..=0x9f => C1[(n - 0x80) as usize].to_string(),
        0xd800..=0xdfff | 0x110000.. => "\u{fffd}".into(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        _ if n & 0xfffe == 0xfffe => String::new(),
        _ => char::from_u32(n).map(String::from).unwrap_or_default(),
    }
}
