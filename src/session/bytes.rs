//! A cursor over little-endian stored bytes, and why a stored row failed to
//! decode. Shared by every row codec (session records, refresh families, the
//! redb backend's index rows).

/// Why a stored record failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record was written by a newer format.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The record is shorter than its fields say.
    #[error("record truncated")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("trailing bytes after record")]
    Trailing,
    /// A text field is not valid UTF-8 or an IP address does not parse.
    #[error("invalid text field")]
    BadText,
    /// The IP address field has an unknown tag.
    #[error("invalid ip address tag {0}")]
    BadIpTag(u8),
    /// The user id is empty or too long.
    #[error("invalid user id")]
    BadUser,
    /// The row's authentication tag does not match: the file was damaged, or
    /// edited by someone without the server key (or another server key is in use).
    #[error("row authentication failed")]
    BadTag,
}

/// A cursor over a little-endian stored row; every read checks the length.
/// Shared by the session record and the refresh family codecs.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A UTF-8 string with a u16 length prefix.
    pub(crate) fn text(&mut self) -> Result<&'a str, RecordError> {
        let n = u16::from_le_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| RecordError::BadText)
    }
    /// A byte string with a u32 length prefix.
    pub(crate) fn bytes_u32(&mut self) -> Result<&'a [u8], RecordError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        self.take(n)
    }
    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// Fails if any bytes are left.
    pub(crate) fn finish(self) -> Result<(), RecordError> {
        if self.b.is_empty() { Ok(()) } else { Err(RecordError::Trailing) }
    }
}
