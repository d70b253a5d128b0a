//! What the renderers of pictures and profiles need, kept in memory that
//! grows with the number of distinct frames and stacks, never with lines.
//!
//! Frames are interned by where they are (module and file offset, else the
//! address), so the same return address in another process (ASLR) is the
//! same frame; stacks are interned as lists of frame ids. Leak reports keep
//! only the selected report's stacks and a downsampled history of totals per
//! stack (at most [`MAX_POINTS`] points) for the chart.

use std::collections::HashMap;

use crate::input::{Frame, Line};

/// Most points kept for the chart of outstanding bytes over time: past it,
/// every other point is dropped, so a week-long `-i 1` stream still fits.
pub const MAX_POINTS: usize = 512;

/// One function at a frame: the frame's own or one inlined into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Func {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u64>,
}

/// A frame as rendered: where it is, and its functions (innermost first,
/// the frame's own function last), empty when unresolved.
#[derive(Debug, Clone)]
pub struct FrameInfo {
    pub addr: Option<u64>,
    pub module: Option<String>,
    pub offset: Option<u64>,
    pub build_id: Option<String>,
    pub funcs: Vec<Func>,
}

impl FrameInfo {
    /// The name an unresolved frame goes by in folded stacks and flame
    /// graphs: `[module+0xoffset]`, or the address.
    pub fn unresolved_name(&self) -> String {
        match (&self.module, self.offset, self.addr) {
            (Some(m), Some(o), _) => format!("[{}+{o:#x}]", basename(m)),
            (Some(m), None, Some(a)) => format!("[{}] {a:#x}", basename(m)),
            (_, _, Some(a)) => format!("{a:#x}"),
            _ => "[unknown]".to_string(),
        }
    }

    /// Function names, outermost (caller) first, as a flame graph stacks them.
    pub fn names_root_first(&self) -> Vec<String> {
        if self.funcs.is_empty() {
            vec![self.unresolved_name()]
        } else {
            self.funcs.iter().rev().map(|f| f.name.clone()).collect()
        }
    }
}

/// Last path component (a module's file name, as BCC prints it).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(path)
}

/// Which samples the pictures show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Outstanding bytes and blocks of a leak report.
    InUse,
    /// Allocated bytes and calls from allocsnoop events.
    Alloc,
}

/// A stack's value in the selected report (or summed allocations).
#[derive(Debug, Clone, Copy, Default)]
pub struct StackValue {
    pub bytes: u64,
    pub count: u64,
    pub growing: bool,
}

/// A leak report's totals, one chart point.
#[derive(Debug, Clone, Default)]
pub struct Point {
    pub ts_ns: u64,
    pub total_bytes: u64,
    /// (stack id, outstanding bytes) of the stacks the report lists.
    pub stacks: Vec<(u32, u64)>,
}

#[derive(Default)]
pub struct Model {
    pub frames: Vec<FrameInfo>,
    by_module: HashMap<Box<str>, HashMap<u64, u32>>,
    by_addr: HashMap<u64, u32>,
    no_stack: Option<u32>,
    stack_ids: HashMap<Box<[u32]>, u32>,
    /// Frame ids of each stack, leaf (the allocator's caller) first.
    pub stacks: Vec<Box<[u32]>>,
    /// Leak reports seen (the report being read included).
    pub reports: u64,
    /// `--report N`: the one to keep (1-based); `None` for the last.
    want_report: Option<u64>,
    current: Vec<(u32, StackValue)>,
    current_point: Point,
    in_report: bool,
    pub selected: Option<(Point, Vec<(u32, StackValue)>)>,
    pub history: Vec<Point>,
    /// Keep every `stride`-th report in `history` (doubles when it fills).
    stride: u64,
    pub allocs: HashMap<u32, StackValue>,
    pub pid: Option<u64>,
}

impl Model {
    pub fn new(want_report: Option<u64>) -> Self {
        Model { want_report, stride: 1, ..Default::default() }
    }

    /// What the pictures show: leak reports when there were any.
    pub fn kind(&self) -> Kind {
        if self.reports > 0 {
            Kind::InUse
        } else {
            Kind::Alloc
        }
    }

    /// The stacks to draw, with their values.
    pub fn samples(&self) -> Vec<(u32, StackValue)> {
        match self.kind() {
            Kind::InUse => self.selected.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
            Kind::Alloc => {
                let mut v: Vec<_> = self.allocs.iter().map(|(k, v)| (*k, *v)).collect();
                v.sort_by_key(|(k, _)| *k);
                v
            }
        }
    }

    /// Time of the selected report, for the profile.
    pub fn time_ns(&self) -> Option<u64> {
        self.selected.as_ref().map(|s| s.0.ts_ns).filter(|t| *t > 0)
    }

    pub fn add(&mut self, line: &Line) {
        match line.kind.as_ref() {
            "report" => {
                self.end_report();
                self.reports += 1;
                self.in_report = true;
                self.current_point = Point {
                    ts_ns: line.ts_ns.unwrap_or(0),
                    total_bytes: line.outstanding_bytes.unwrap_or(0),
                    stacks: Vec::new(),
                };
                if line.pid.is_some() {
                    self.pid = line.pid;
                }
            }
            "stack" => {
                if !self.in_report {
                    // A stack line without its report line (a cut stream):
                    // it starts a report of its own.
                    self.reports += 1;
                    self.in_report = true;
                    self.current_point = Point::default();
                }
                let id = self.intern_stack(line.stack.as_deref().unwrap_or(&[]));
                let bytes = line.outstanding_bytes.unwrap_or(0);
                let v = StackValue {
                    bytes,
                    count: line.outstanding_count.unwrap_or(0),
                    growing: line.growing.unwrap_or(false),
                };
                self.current.push((id, v));
                self.current_point.stacks.push((id, bytes));
            }
            "alloc" => {
                let op = line.op.as_deref().unwrap_or("");
                if matches!(op, "free" | "munmap") || line.failed == Some(true) {
                    return;
                }
                let Some(size) = line.size_bytes else { return };
                if op.starts_with("realloc") && size == 0 {
                    return; // realloc(p, 0) frees
                }
                let id = self.intern_stack(line.stack.as_deref().unwrap_or(&[]));
                let e = self.allocs.entry(id).or_default();
                e.bytes += size;
                e.count += 1;
                if line.pid.is_some() {
                    self.pid = line.pid;
                }
            }
            _ => {}
        }
    }

    /// Close the report being read (at the next report and at the end).
    pub fn end_report(&mut self) {
        if !self.in_report {
            return;
        }
        self.in_report = false;
        let point = std::mem::take(&mut self.current_point);
        let stacks = std::mem::take(&mut self.current);
        if self.want_report.is_none_or(|n| n == self.reports) {
            self.selected = Some((point.clone(), stacks));
        }
        if (self.reports - 1) % self.stride == 0 {
            self.history.push(point);
            if self.history.len() >= MAX_POINTS {
                // Keep every other point: the chart's resolution halves,
                // its memory stays put.
                let mut i = 0;
                self.history.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
        }
    }

    fn intern_stack(&mut self, frames: &[Frame]) -> u32 {
        let ids: Vec<u32> = if frames.is_empty() {
            vec![self.no_stack_frame()]
        } else {
            frames.iter().map(|f| self.intern_frame(f)).collect()
        };
        if let Some(id) = self.stack_ids.get(ids.as_slice()) {
            return *id;
        }
        let id = self.stacks.len() as u32;
        let ids: Box<[u32]> = ids.into();
        self.stacks.push(ids.clone());
        self.stack_ids.insert(ids, id);
        id
    }

    fn no_stack_frame(&mut self) -> u32 {
        if let Some(id) = self.no_stack {
            return id;
        }
        let id = self.push_frame(FrameInfo {
            addr: None,
            module: None,
            offset: None,
            build_id: None,
            funcs: vec![Func { name: "[no stack]".into(), file: None, line: None }],
        });
        self.no_stack = Some(id);
        id
    }

    fn intern_frame(&mut self, f: &Frame) -> u32 {
        let found = match (&f.module, f.offset) {
            (Some(m), Some(o)) => self.by_module.get(m.as_ref()).and_then(|o2| o2.get(&o)),
            _ => self.by_addr.get(&f.addr.unwrap_or(0)),
        };
        if let Some(id) = found {
            return *id;
        }
        let mut funcs = Vec::new();
        if let Some(sym) = &f.sym {
            for i in f.inlined.iter().flatten() {
                funcs.push(Func {
                    name: i.sym.as_deref().unwrap_or("[unknown]").to_string(),
                    file: i.file.as_deref().map(str::to_string),
                    line: i.line,
                });
            }
            funcs.push(Func {
                name: sym.to_string(),
                file: f.file.as_deref().map(str::to_string),
                line: f.line,
            });
        }
        let id = self.push_frame(FrameInfo {
            addr: f.addr,
            module: f.module.as_deref().map(str::to_string),
            offset: f.offset,
            build_id: f.build_id.as_deref().filter(|b| !b.is_empty()).map(str::to_string),
            funcs,
        });
        match (&f.module, f.offset) {
            (Some(m), Some(o)) => {
                if let Some(map) = self.by_module.get_mut(m.as_ref()) {
                    map.insert(o, id);
                } else {
                    self.by_module.insert(m.as_ref().into(), HashMap::from([(o, id)]));
                }
            }
            _ => {
                self.by_addr.insert(f.addr.unwrap_or(0), id);
            }
        }
        id
    }

    fn push_frame(&mut self, f: FrameInfo) -> u32 {
        self.frames.push(f);
        (self.frames.len() - 1) as u32
    }

    /// A stack's function names, root (outermost caller) first.
    pub fn names_root_first(&self, stack: u32) -> Vec<String> {
        let mut out = Vec::new();
        for &f in self.stacks[stack as usize].iter().rev() {
            out.extend(self.frames[f as usize].names_root_first());
        }
        out
    }

    /// The name a stack goes by in a legend: its allocation site (the
    /// innermost function at its first frame), resolved or not.
    pub fn stack_label(&self, stack: u32) -> String {
        let Some(&leaf) = self.stacks[stack as usize].first() else { return String::new() };
        let f = &self.frames[leaf as usize];
        f.funcs.first().map_or_else(|| f.unresolved_name(), |func| func.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse;

    const STACK: &str = r#"{"type":"stack","outstanding_bytes":24,"outstanding_count":3,"growing":true,"stack":[{"addr":"0x1","module":"/bin/a","offset":"0x10","sym":"leaf","inlined":[{"sym":"inner"}]},{"addr":"0x2","module":"/bin/a","offset":"0x20"}]}"#;

    #[test]
    fn same_stack_interned_once_and_last_report_selected() {
        let mut m = Model::new(None);
        for i in 0..3 {
            m.add(
                &parse(&format!(r#"{{"type":"report","ts_ns":{i},"outstanding_bytes":24}}"#))
                    .unwrap(),
            );
            m.add(&parse(STACK).unwrap());
        }
        m.end_report();
        assert_eq!(m.stacks.len(), 1);
        assert_eq!(m.frames.len(), 2);
        assert_eq!(m.history.len(), 3);
        let (p, s) = m.selected.as_ref().unwrap();
        assert_eq!(p.ts_ns, 2);
        assert_eq!(s[0].1.bytes, 24);
        assert_eq!(m.names_root_first(0), vec!["[a+0x20]", "leaf", "inner"]);
        assert_eq!(m.stack_label(0), "inner");
    }

    #[test]
    fn report_n_is_kept_and_history_is_bounded() {
        let mut m = Model::new(Some(2));
        for i in 0..(3 * MAX_POINTS as u64) {
            m.add(
                &parse(&format!(r#"{{"type":"report","ts_ns":{i},"outstanding_bytes":{i}}}"#))
                    .unwrap(),
            );
            m.add(&parse(STACK).unwrap());
        }
        m.end_report();
        assert_eq!(m.selected.as_ref().unwrap().0.ts_ns, 1);
        assert!(m.history.len() < MAX_POINTS);
        assert_eq!(m.history[0].ts_ns, 0);
        assert!(m.history.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
    }

    #[test]
    fn allocs_summed_frees_ignored() {
        let mut m = Model::new(None);
        for l in [
            r#"{"type":"alloc","op":"malloc","size_bytes":8,"stack":[{"addr":"0x5"}]}"#,
            r#"{"type":"alloc","op":"malloc","size_bytes":8,"stack":[{"addr":"0x5"}]}"#,
            r#"{"type":"alloc","op":"free","addr":"0x9","stack":[{"addr":"0x6"}]}"#,
            r#"{"type":"alloc","op":"malloc","size_bytes":8,"failed":true}"#,
            r#"{"type":"alloc","op":"calloc","size_bytes":3}"#,
        ] {
            m.add(&parse(l).unwrap());
        }
        assert_eq!(m.kind(), Kind::Alloc);
        let s = m.samples();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].1.bytes, s[0].1.count), (16, 2));
        assert_eq!(m.names_root_first(s[1].0), vec!["[no stack]"]);
        assert_eq!(m.names_root_first(s[0].0), vec!["0x5"]);
    }
}
