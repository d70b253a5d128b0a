//! A pprof profile (profile.proto, gzipped), the format go tool pprof,
//! Grafana Pyroscope, Parca and speedscope open.
//!
//! The encoder is written by hand: profile.proto is small and frozen, and
//! the protobuf wire format needs only varints and length-delimited fields,
//! so 60 lines spare a protobuf crate with its code generation (prost-build
//! wants protoc or a build script) for one message. gzip is flate2's.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::model::{Kind, Model};

/// Protobuf wire encoding, only what profile.proto needs.
#[derive(Default)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// An integer field (int64/uint64/bool); zero is the default and left out.
    pub fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v);
        }
    }

    pub fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    /// A packed repeated integer field.
    pub fn packed(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) {
        let mut inner = Pb::default();
        for v in vs {
            inner.varint(v);
        }
        if !inner.0.is_empty() {
            self.bytes(field, &inner.0);
        }
    }
}

/// The string table: index 0 is "".
struct Strings {
    ids: HashMap<String, i64>,
    list: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        Strings { ids: HashMap::from([(String::new(), 0)]), list: vec![String::new()] }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }
}

fn value_type(strings: &mut Strings, ty: &str, unit: &str) -> Pb {
    let mut m = Pb::default();
    m.int(1, strings.id(ty));
    m.int(2, strings.id(unit));
    m
}

/// The profile's protobuf bytes (not compressed).
pub fn encode(model: &Model) -> Vec<u8> {
    let mut s = Strings::new();
    let mut p = Pb::default();
    let (objects, space) = match model.kind() {
        Kind::InUse => ("inuse_objects", "inuse_space"),
        Kind::Alloc => ("alloc_objects", "alloc_space"),
    };
    p.message(1, value_type(&mut s, objects, "count"));
    p.message(1, value_type(&mut s, space, "bytes"));

    let samples = model.samples();
    // Only frames used by the samples are written.
    let mut used = vec![false; model.frames.len()];
    for (stack, v) in &samples {
        let ids = &model.stacks[*stack as usize];
        let mut sm = Pb::default();
        sm.packed(1, ids.iter().map(|&f| u64::from(f) + 1));
        sm.packed(2, [v.count, v.bytes]);
        if model.kind() == Kind::InUse {
            let mut label = Pb::default();
            label.int(1, s.id("growing"));
            label.int(2, s.id(if v.growing { "true" } else { "false" }));
            sm.message(3, label);
        }
        p.message(2, sm);
        for &f in ids.iter() {
            used[f as usize] = true;
        }
    }

    // Mappings: one per module, placed where the first frame seen in it
    // says the module's file offset 0 was loaded, spanning its frames.
    struct Map {
        id: u64,
        base: u64,
        lo: u64,
        hi: u64,
        build_id: Option<String>,
        resolved: bool,
        inlined: bool,
    }
    let mut maps: HashMap<&str, Map> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, f) in model.frames.iter().enumerate() {
        let (true, Some(m), Some(off)) = (used[i], f.module.as_deref(), f.offset) else {
            continue;
        };
        let base = f.addr.map_or(0, |a| a.wrapping_sub(off));
        let e = maps.entry(m).or_insert_with(|| {
            order.push(m);
            Map {
                id: order.len() as u64,
                base,
                lo: off,
                hi: off,
                build_id: None,
                resolved: true,
                inlined: false,
            }
        });
        e.lo = e.lo.min(off);
        e.hi = e.hi.max(off);
        if e.build_id.is_none() {
            e.build_id.clone_from(&f.build_id);
        }
        e.resolved &= !f.funcs.is_empty();
        e.inlined |= f.funcs.len() > 1;
    }
    for name in &order {
        let m = &maps[name];
        let mut mm = Pb::default();
        mm.uint(1, m.id);
        mm.uint(2, m.base.wrapping_add(m.lo));
        mm.uint(3, m.base.wrapping_add(m.hi + 1));
        mm.uint(4, m.lo);
        mm.int(5, s.id(name));
        mm.int(6, s.id(m.build_id.as_deref().unwrap_or("")));
        mm.uint(7, m.resolved.into());
        mm.uint(8, m.resolved.into());
        mm.uint(9, m.resolved.into());
        mm.uint(10, m.inlined.into());
        p.message(3, mm);
    }

    // Locations (id = frame id + 1), and functions by (name, file).
    let mut funcs: HashMap<(String, String), u64> = HashMap::new();
    let mut func_msgs = Vec::new();
    for (i, f) in model.frames.iter().enumerate() {
        if !used[i] {
            continue;
        }
        let mut loc = Pb::default();
        loc.uint(1, i as u64 + 1);
        let map = f.module.as_deref().and_then(|m| maps.get(m));
        if let Some(m) = map {
            loc.uint(2, m.id);
        }
        let addr = match (map, f.offset) {
            (Some(m), Some(off)) => m.base.wrapping_add(off),
            _ => f.addr.unwrap_or(0),
        };
        loc.uint(3, addr);
        for func in &f.funcs {
            let file = func.file.clone().unwrap_or_default();
            let key = (func.name.clone(), file);
            let next = funcs.len() as u64 + 1;
            let fid = *funcs.entry(key).or_insert_with(|| {
                let mut fm = Pb::default();
                fm.uint(1, next);
                fm.int(2, s.id(&func.name));
                fm.int(3, s.id(&func.name));
                fm.int(4, s.id(func.file.as_deref().unwrap_or("")));
                func_msgs.push(fm);
                next
            });
            let mut line = Pb::default();
            line.uint(1, fid);
            line.int(2, func.line.unwrap_or(0) as i64);
            loc.message(4, line);
        }
        if f.funcs.is_empty() && f.module.is_none() {
            // No mapping to symbolize it from: give it a function of its
            // own name so that it shows as itself rather than a bare hex.
            let name = f.unresolved_name();
            let next = funcs.len() as u64 + 1;
            let fid = *funcs.entry((name.clone(), String::new())).or_insert_with(|| {
                let mut fm = Pb::default();
                fm.uint(1, next);
                fm.int(2, s.id(&name));
                fm.int(3, s.id(&name));
                func_msgs.push(fm);
                next
            });
            let mut line = Pb::default();
            line.uint(1, fid);
            loc.message(4, line);
        }
        p.message(4, loc);
    }
    for fm in func_msgs {
        p.message(5, fm);
    }
    if let Some(t) = model.time_ns() {
        p.int(9, t as i64);
    }
    p.message(11, value_type(&mut s, "space", "bytes"));
    p.int(12, 1);
    p.int(14, s.id(space));
    // The string table last: every id above has been handed out by now.
    for st in &s.list {
        p.bytes(6, st.as_bytes());
    }
    p.0
}

/// The gzipped profile, as pprof files are stored.
pub fn write(model: &Model, out: impl Write) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&encode(model))?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse;

    /// A minimal protobuf reader for the tests: (field, wire, value or bytes).
    fn fields(mut b: &[u8]) -> Vec<(u32, u64, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte < 0x80 {
                    return v;
                }
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let k = varint(&mut b);
            match k & 7 {
                0 => out.push(((k >> 3) as u32, varint(&mut b), Vec::new())),
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push(((k >> 3) as u32, 0, b[..n].to_vec()));
                    b = &b[n..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    #[test]
    fn varints_and_fields() {
        let mut p = Pb::default();
        p.uint(1, 300);
        p.uint(2, 0);
        p.bytes(3, b"ab");
        p.packed(4, [1, 128]);
        p.int(5, -1);
        assert_eq!(
            p.0,
            [
                0x08, 0xac, 0x02, 0x1a, 2, b'a', b'b', 0x22, 3, 1, 0x80, 1, 0x28, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
    }

    #[test]
    fn profile_of_one_report() {
        let mut m = Model::new(None);
        for l in [
            r#"{"type":"report","ts_ns":5,"outstanding_bytes":24}"#,
            r#"{"type":"stack","outstanding_bytes":24,"outstanding_count":3,"stack":[{"addr":"0x1010","module":"/bin/a","offset":"0x10","build_id":"ab","sym":"leaf","file":"a.c","line":4},{"addr":"0x1020","module":"/bin/a","offset":"0x20","sym":"main"}]}"#,
        ] {
            m.add(&parse(l).unwrap());
        }
        m.end_report();
        let top = fields(&encode(&m));
        let strings: Vec<String> = top
            .iter()
            .filter(|f| f.0 == 6)
            .map(|f| String::from_utf8(f.2.clone()).unwrap())
            .collect();
        assert_eq!(strings[0], "");
        for want in ["inuse_objects", "inuse_space", "leaf", "main", "a.c", "/bin/a", "ab"] {
            assert!(strings.iter().any(|s| s == want), "{want} in {strings:?}");
        }
        let samples: Vec<_> = top.iter().filter(|f| f.0 == 2).collect();
        assert_eq!(samples.len(), 1);
        let sf = fields(&samples[0].2);
        assert_eq!(sf[0], (1, 0, vec![1, 2]), "locations leaf first");
        assert_eq!(sf[1], (2, 0, vec![3, 24]), "objects, bytes");
        let map = fields(&top.iter().find(|f| f.0 == 3).unwrap().2);
        assert_eq!(map[1], (2, 0x1010, vec![]), "memory_start");
        assert_eq!(map[2], (3, 0x1021, vec![]), "memory_limit");
        assert_eq!(top.iter().filter(|f| f.0 == 4).count(), 2, "locations");
        assert_eq!(top.iter().filter(|f| f.0 == 5).count(), 2, "functions");
        assert!(top.contains(&(9, 5, vec![])), "time_nanos");
        let default = top.iter().find(|f| f.0 == 14).unwrap().1 as usize;
        assert_eq!(strings[default], "inuse_space");
    }
}
