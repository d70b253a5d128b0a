//! The modules a resolver holds open: at most a fixed number, the one
//! used longest ago closed to make room.
//!
//! A long run meets modules without end (a library per container image, a
//! binary per short-lived process), and each open one holds its symbol
//! table, its answers and its file's mapping. Ids stay valid as names:
//! an id whose module was closed is simply not found (its slot has moved
//! on to another generation), and whoever held it loads the file again.

use super::module::Module;

/// A module's name in its resolver's table (slot and generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleId {
    slot: u32,
    generation: u32,
}

struct Slot {
    generation: u32,
    module: Option<Module>,
    /// When last used (a count of uses across the table).
    used: u64,
}

pub struct ModuleTable {
    slots: Vec<Slot>,
    /// At most this many modules open at once.
    max: usize,
    open: usize,
    clock: u64,
}

impl ModuleTable {
    pub fn new(max: usize) -> ModuleTable {
        ModuleTable { slots: Vec::new(), max: max.max(1), open: 0, clock: 0 }
    }

    /// The module `id`, if it is still open (counts as a use).
    #[inline]
    pub fn get_mut(&mut self, id: ModuleId) -> Option<&mut Module> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        self.clock += 1;
        slot.used = self.clock;
        slot.module.as_mut()
    }

    /// The module `id`, if it is still open (not a use).
    pub fn get(&self, id: ModuleId) -> Option<&Module> {
        let slot = self.slots.get(id.slot as usize)?;
        (slot.generation == id.generation).then_some(slot.module.as_ref()).flatten()
    }

    /// The open modules (not a use).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Module> {
        self.slots.iter_mut().filter_map(|s| s.module.as_mut())
    }

    pub fn is_open(&self, id: ModuleId) -> bool {
        self.get(id).is_some()
    }

    /// How many modules are open.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open
    }

    /// Add `module`; when the table is full, the module used longest ago is
    /// closed first and returned.
    pub fn insert(&mut self, module: Module) -> (ModuleId, Option<Module>) {
        self.clock += 1;
        let mut closed = None;
        let free = if self.open >= self.max {
            // Full: the least recently used goes (a scan, but a load costs
            // far more).
            let lru = (0..self.slots.len())
                .filter(|&i| self.slots[i].module.is_some())
                .min_by_key(|&i| self.slots[i].used);
            lru.inspect(|&i| {
                closed = self.slots[i].module.take();
                self.open -= 1;
            })
        } else {
            self.slots.iter().position(|s| s.module.is_none())
        };
        let i = free.unwrap_or_else(|| {
            self.slots.push(Slot { generation: 0, module: None, used: 0 });
            self.slots.len() - 1
        });
        let slot = &mut self.slots[i];
        slot.generation = slot.generation.wrapping_add(1);
        slot.module = Some(module);
        slot.used = self.clock;
        self.open += 1;
        (ModuleId { slot: i as u32, generation: slot.generation }, closed)
    }
}
