//! Folded stacks and the flame graph, from one tree of function names.
//!
//! The SVG is written here rather than by inferno (CDDL-1.0, which does not
//! fit the workspace's MIT OR Apache-2.0): a flame graph is rectangles laid
//! out by a depth-first walk, a hundred lines, and we need our own colours
//! for growing stacks anyway.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::model::{Kind, Model};

/// A function in the flame graph: its bytes (inclusive), how many of them
/// come from growing stacks, and its callees by name.
#[derive(Debug, Default)]
pub struct Node {
    pub value: u64,
    pub growing: u64,
    pub children: BTreeMap<String, Node>,
}

impl Node {
    pub fn depth(&self) -> usize {
        self.children.values().map(|c| 1 + c.depth()).max().unwrap_or(0)
    }
}

/// A name as it may appear in a folded line: `;` separates frames there.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// The tree of the model's samples, root ("all") first.
pub fn tree(model: &Model) -> Node {
    let mut root = Node::default();
    for (stack, v) in model.samples() {
        if v.bytes == 0 {
            continue;
        }
        let g = if v.growing { v.bytes } else { 0 };
        root.value += v.bytes;
        root.growing += g;
        let mut node = &mut root;
        for name in model.names_root_first(stack) {
            node = node.children.entry(clean(&name)).or_default();
            node.value += v.bytes;
            node.growing += g;
        }
    }
    root
}

/// Folded stacks, `main;a;leak_site 24`, one line per distinct stack
/// (sorted, as flamegraph.pl and inferno expect).
pub fn folded(model: &Model) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (stack, v) in model.samples() {
        if v.bytes == 0 {
            continue;
        }
        let names: Vec<String> = model.names_root_first(stack).iter().map(|n| clean(n)).collect();
        *lines.entry(names.join(";")).or_default() += v.bytes;
    }
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{k} {v}");
    }
    out
}

/// Escape text for XML (and HTML) content and attributes.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// A warm colour for ordinary frames, a blue one for growing ones; stable
/// per name, as in flamegraph.pl, so two graphs compare by eye.
fn colour(name: &str, growing: bool) -> String {
    let h = name.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619));
    let a = h & 0xff;
    let b = h >> 8 & 0xff;
    if growing {
        format!("rgb({},{},{})", 40 + a % 60, 90 + b % 70, 220)
    } else {
        format!("rgb({},{},{})", 205 + a % 50, 80 + b % 130, 40 + a % 40)
    }
}

/// Whether most of a node's bytes come from growing stacks.
pub fn is_growing(n: &Node) -> bool {
    n.growing > 0 && n.growing * 2 >= n.value
}

const WIDTH: f64 = 1200.0;
const PAD: f64 = 10.0;
const ROW: f64 = 16.0;
const TOP: f64 = 48.0;

/// The flame graph as a standalone SVG document.
pub fn svg(model: &Model, title: &str) -> String {
    let root = tree(model);
    let depth = root.depth() + 1;
    let height = TOP + ROW * depth as f64 + 24.0;
    let what = match model.kind() {
        Kind::InUse => "outstanding",
        Kind::Alloc => "allocated",
    };
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Verdana, sans-serif" font-size="12">
<style>rect.f:hover {{ stroke: black; stroke-width: 1; }}</style>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>
<text x="{x}" y="20" text-anchor="middle" font-size="16">{t}</text>
<text x="{x}" y="38" text-anchor="middle" fill="#555">{sub}</text>
"##,
        x = WIDTH / 2.0,
        t = xml_escape(title),
        sub = xml_escape(&format!(
            "{} bytes {what} ({}); blue: growing stacks",
            root.value,
            crate::text::human_bytes(root.value as f64)
        )),
    );
    if root.value == 0 {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" text-anchor="middle">no samples</text>"##,
            WIDTH / 2.0,
            TOP + 12.0
        );
    } else {
        let scale = (WIDTH - 2.0 * PAD) / root.value as f64;
        let bottom = TOP + ROW * (depth - 1) as f64;
        draw(&mut o, "all", &root, root.value, PAD, bottom, scale);
    }
    o.push_str("</svg>\n");
    o
}

fn draw(o: &mut String, name: &str, n: &Node, total: u64, x: f64, y: f64, scale: f64) {
    let w = n.value as f64 * scale;
    if w < 0.1 {
        return;
    }
    let growing = is_growing(n);
    let pct = 100.0 * n.value as f64 / total as f64;
    let mut tip = format!("{name}: {} bytes ({pct:.2}%)", n.value);
    if n.growing > 0 {
        let _ = write!(tip, ", {} bytes in growing stacks", n.growing);
    }
    let _ = write!(
        o,
        r##"<g><title>{}</title><rect class="f" x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h}" rx="2" fill="{fill}"/>"##,
        xml_escape(&tip),
        h = ROW - 1.0,
        fill = colour(name, growing),
    );
    // About 7 px per character at 12 px Verdana.
    let fits = ((w - 6.0) / 7.0).floor();
    if fits >= 3.0 {
        let chars: Vec<char> = name.chars().collect();
        let label: String = if chars.len() as f64 <= fits {
            name.to_string()
        } else {
            chars[..fits as usize - 2].iter().collect::<String>() + ".."
        };
        let _ = write!(
            o,
            r##"<text x="{:.2}" y="{:.1}">{}</text>"##,
            x + 3.0,
            y + ROW - 4.0,
            xml_escape(&label)
        );
    }
    o.push_str("</g>\n");
    let mut cx = x;
    for (cname, c) in &n.children {
        draw(o, cname, c, total, cx, y - ROW, scale);
        cx += c.value as f64 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse;

    fn model(lines: &[&str]) -> Model {
        let mut m = Model::new(None);
        for l in lines {
            m.add(&parse(l).unwrap());
        }
        m.end_report();
        m
    }

    const TWO: [&str; 3] = [
        r##"{"type":"report","outstanding_bytes":30}"##,
        r##"{"type":"stack","outstanding_bytes":24,"growing":true,"stack":[{"addr":"0x1","module":"/a","offset":"0x1","sym":"leak<int>"},{"addr":"0x9","module":"/a","offset":"0x9","sym":"main"}]}"##,
        r##"{"type":"stack","outstanding_bytes":6,"stack":[{"addr":"0x2","module":"/a","offset":"0x2","sym":"a;b"},{"addr":"0x9","module":"/a","offset":"0x9","sym":"main"}]}"##,
    ];

    #[test]
    fn folded_lines() {
        assert_eq!(folded(&model(&TWO)), "main;a:b 6\nmain;leak<int> 24\n");
        assert_eq!(folded(&model(&[])), "");
    }

    #[test]
    fn tree_sums_and_growing() {
        let t = tree(&model(&TWO));
        assert_eq!((t.value, t.growing), (30, 24));
        let main = &t.children["main"];
        assert_eq!(main.value, 30);
        assert!(is_growing(main));
        assert!(!is_growing(&main.children["a:b"]));
        assert_eq!(t.depth(), 2);
    }

    #[test]
    fn svg_escapes_names() {
        let s = svg(&model(&TWO), "t & t");
        assert!(s.contains("leak&lt;int&gt;: 24 bytes (80.00%), 24 bytes in growing stacks"));
        assert!(s.contains("t &amp; t"));
        assert!(!s.contains("leak<int>"));
        assert!(svg(&model(&[]), "x").contains("no samples"));
    }
}
