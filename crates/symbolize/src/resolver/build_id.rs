//! Build ids as frames write them (hex), parsed without allocating.

/// The longest build id accepted, in bytes (GNU ids are 20; 64 leaves room
/// for any hash a linker may use).
const BUILD_ID_MAX: usize = 64;

/// A build id parsed from a frame's hex string. Kept inline: it is parsed
/// for every frame, so parsing must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildId {
    len: u8,
    bytes: [u8; BUILD_ID_MAX],
}

impl std::ops::Deref for BuildId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Parse a hex build id; `None` when empty.
pub fn parse_build_id(s: &str) -> Result<Option<BuildId>, String> {
    let s = s.trim().as_bytes();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() % 2 != 0 || s.len() > 2 * BUILD_ID_MAX {
        return Err(format!(
            "build_id must be an even number of hex digits, at most {}",
            2 * BUILD_ID_MAX
        ));
    }
    let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(|| "build_id is not hex".to_string());
    let mut id = BuildId { len: (s.len() / 2) as u8, bytes: [0; BUILD_ID_MAX] };
    for (b, pair) in id.bytes.iter_mut().zip(s.chunks_exact(2)) {
        *b = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Ok(Some(id))
}

/// [`parse_build_id`] for frame after frame: a stream repeats a handful of
/// ids, so the last one parsed is kept, as written and as bytes.
#[derive(Default)]
pub struct LastBuildId {
    last: Option<(String, BuildId)>,
}

impl LastBuildId {
    /// [`parse_build_id`], reusing the last answer when `s` repeats the
    /// last id.
    pub fn parse(&mut self, s: &str) -> Result<Option<BuildId>, String> {
        if let Some((text, id)) = &self.last {
            if text == s.trim() {
                return Ok(Some(*id));
            }
        }
        let id = parse_build_id(s)?;
        if let Some(id) = id {
            self.last = Some((s.trim().to_string(), id));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids() {
        assert_eq!(
            parse_build_id("ab01").map(|b| b.map(|b| b.to_vec())),
            Ok(Some(vec![0xab, 0x01]))
        );
        assert_eq!(parse_build_id(&"0f".repeat(64)).map(|b| b.map(|b| b.len())), Ok(Some(64)));
        assert!(parse_build_id(&"0f".repeat(65)).is_err());
        assert_eq!(parse_build_id(""), Ok(None));
        assert!(parse_build_id("abc").is_err());
        assert!(parse_build_id("zz").is_err());
        assert!(parse_build_id("é1").is_err());
        // The per-frame path reuses the last id, and only that one.
        let mut r = LastBuildId::default();
        let bytes = |r: &mut LastBuildId, s: &str| r.parse(s).map(|b| b.map(|b| b.to_vec()));
        assert_eq!(bytes(&mut r, "ab01"), Ok(Some(vec![0xab, 0x01])));
        assert_eq!(bytes(&mut r, " ab01 "), Ok(Some(vec![0xab, 0x01])));
        assert_eq!(bytes(&mut r, "cd"), Ok(Some(vec![0xcd])));
        assert!(bytes(&mut r, "zz").is_err());
        assert_eq!(bytes(&mut r, ""), Ok(None));
    }
}
