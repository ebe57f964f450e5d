//! Records of the `EVENTS` ring buffer, decoded in one place: every record
//! starts with an `EventHeader` whose kind and length say what follows.

use filter_common::{AutoBlockEvent, DropEvent, EventHeader};

/// One ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    AutoBlock(AutoBlockEvent),
    Drop(DropEvent),
    /// A kind this build does not know (a newer program), or a header that
    /// does not match its record: skipped.
    Unknown {
        header: EventHeader,
        len: usize,
    },
    /// Shorter than a header.
    Short(usize),
}

/// Decodes `record`; a kind is taken only when its header (kind and
/// length) is exactly this build's and the record is long enough.
#[must_use]
pub fn decode(record: &[u8]) -> Event {
    let Some(header) = read::<EventHeader>(record) else {
        return Event::Short(record.len());
    };
    if header == AutoBlockEvent::HEADER
        && let Some(event) = read::<AutoBlockEvent>(record)
    {
        return Event::AutoBlock(event);
    }
    if header == DropEvent::HEADER
        && let Some(event) = read::<DropEvent>(record)
    {
        return Event::Drop(event);
    }
    Event::Unknown {
        header,
        len: record.len(),
    }
}

/// A `T` from the start of `bytes`, if there are enough of them.
fn read<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    // SAFETY: at least `size_of::<T>()` bytes (checked); `T` is plain old
    // data (`Pod`: any bit pattern is valid); read unaligned.
    (bytes.len() >= size_of::<T>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_by_header() {
        let event = DropEvent {
            header: DropEvent::HEADER,
            weight: 7,
            ..DropEvent::default()
        };
        // SAFETY: DropEvent is plain old data; viewing it as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<DropEvent>())
        };
        assert_eq!(decode(bytes), Event::Drop(event));
        assert!(matches!(decode(&bytes[..20]), Event::Unknown { .. }));
        assert_eq!(decode(&bytes[..4]), Event::Short(4));
    }
}
