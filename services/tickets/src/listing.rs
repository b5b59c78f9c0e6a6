//! The listing behind `GET /api/tickets`: filters, sort orders and keyset
//! pages.
//!
//! # Keyset pages
//!
//! A page never skips: the next page starts strictly after the last ticket
//! of this one in the sort order, which always ends with `_id` so that it is
//! total. The cursor handed out in the `Link` header is that position —
//! the sort, the last ticket's price and id — base64url-encoded. It is
//! opaque to clients and checked when it comes back (a cursor of another
//! sort order is refused). A ticket listed while someone pages lands where
//! its sort key puts it: in newest-first order, before the first page, so
//! paging on never shows it; by price, on the page its price belongs to.
//! Either way no ticket is shown twice and none that stayed listed is missed.
//!
//! # Indexes
//!
//! Every listing is an equality on the leading fields of one index and a
//! range (the cursor) on the fields it is sorted by, so the database reads
//! the page off the index in order and stops after `limit + 1`:
//!
//! | listing | index |
//! |---|---|
//! | for sale, newest | `{orderId, withdrawn, _id: -1}` |
//! | for sale, by price (either way) | `{orderId, withdrawn, price, _id}` |
//! | search, newest | `{prefixes, orderId, withdrawn, _id: -1}` |
//! | search, by price | `{prefixes, orderId, withdrawn, price, _id}` |
//! | the seller's own | `{userId, _id: -1}` |
//!
//! "For sale" is `orderId: null, withdrawn: null` (neither field stored).
//! A search of several words uses the index for one key — two of its words'
//! pair key, or one word (see [`crate::search`]) — and checks the words on
//! each ticket read; a price filter on the newest-first order is
//! likewise checked on each ticket read (by price, it is a range on the
//! index). Those two can read more than `limit + 1` tickets when few of the
//! tickets in index order match.
//!
//! # Windows
//!
//! A server that stops reading at `limit` (MongoDB) reads `limit + 1`
//! index entries for any of these. Not every MongoDB-wire server does:
//! SecantusDB, the local default, reads every document inside the index
//! bounds, sorts them and only then applies `limit`, so an unbounded page
//! costs the whole collection there. The listing of tickets for sale is
//! therefore read in [`Window`]s: stretches of the sort axis (the id, a
//! 96-bit number that grows with time, or the price) closed at both ends
//! in the filter, each read with one query. A page read before starts
//! with the window that filled it last time; another with the width of the
//! last window that filled a page of its kind ([`Spans`]); when a window
//! yields too few tickets the next one starts where it ended and is wider,
//! by how many it yielded, until the page is full or the axis ends. The
//! result is the same page as one unbounded read, on any server; only the
//! number of queries and of documents read differ. Each window's filter
//! keeps the bounded range in the first clause of an `$and`, with the
//! equalities of its index, and every other condition in later clauses, so
//! a planner that routes on one clause bounds its scan by the window.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};

use crate::store::Ticket;

/// A sort order of the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sort {
    /// Most recently listed first (`sort=newest`, the default).
    #[default]
    Newest,
    /// Cheapest first (`sort=price`).
    PriceAscending,
    /// Dearest first (`sort=-price`).
    PriceDescending,
}

impl Sort {
    /// The `sort=` value, or `None` if it is not one.
    pub fn parse(raw: &str) -> Option<Sort> {
        match raw {
            "newest" => Some(Sort::Newest),
            "price" => Some(Sort::PriceAscending),
            "-price" => Some(Sort::PriceDescending),
            _ => None,
        }
    }

    /// The `sort=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Newest => "newest",
            Sort::PriceAscending => "price",
            Sort::PriceDescending => "-price",
        }
    }

    /// The database's sort document (always ending with `_id`).
    pub fn order(self) -> Document {
        match self {
            Sort::Newest => doc! { "_id": -1 },
            Sort::PriceAscending => doc! { "price": 1, "_id": 1 },
            Sort::PriceDescending => doc! { "price": -1, "_id": -1 },
        }
    }

    /// Every order a listing can be sorted in.
    pub const ALL: [Sort; 3] = [Sort::Newest, Sort::PriceAscending, Sort::PriceDescending];

    /// Whether the sort is on the price axis (else on the id).
    fn on_price(self) -> bool {
        self != Sort::Newest
    }

    /// Whether the sort goes down its axis.
    fn descending(self) -> bool {
        self != Sort::PriceAscending
    }

    fn tag(self) -> &'static str {
        match self {
            Sort::Newest => "n",
            Sort::PriceAscending => "p",
            Sort::PriceDescending => "d",
        }
    }
}

/// Where the next page starts: strictly after this position in `sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub sort: Sort,
    /// The last ticket's price in cents (unused by [`Sort::Newest`]).
    pub price: i64,
    pub id: ObjectId,
}

impl Cursor {
    /// The position after `ticket` in `sort`.
    pub fn after(sort: Sort, ticket: &Ticket) -> Cursor {
        Cursor {
            sort,
            price: ticket.price.cents(),
            id: ticket.id,
        }
    }

    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}.{}.{}",
            self.sort.tag(),
            self.price,
            self.id.to_hex()
        ))
    }

    /// Reads a cursor handed out by [`Cursor::encode`]; `None` for anything
    /// else.
    pub fn decode(raw: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.splitn(3, '.');
        let tag = parts.next()?;
        let sort = Sort::ALL.into_iter().find(|sort| sort.tag() == tag)?;
        let price = parts.next()?.parse().ok()?;
        let id = ObjectId::parse_str(parts.next()?).ok()?;
        Some(Cursor { sort, price, id })
    }

    /// The cursor's place on its sort's axis.
    fn position(&self) -> Position {
        if self.sort.on_price() {
            Position::from(self.price)
        } else {
            id_position(self.id)
        }
    }

    /// The condition "after this position".
    fn filter(&self) -> Document {
        let (id, price) = (self.id, self.price);
        match self.sort {
            Sort::Newest => doc! { "_id": { "$lt": id } },
            Sort::PriceAscending => doc! { "$or": [
                { "price": { "$gt": price } },
                { "price": price, "_id": { "$gt": id } },
            ] },
            Sort::PriceDescending => doc! { "$or": [
                { "price": { "$lt": price } },
                { "price": price, "_id": { "$lt": id } },
            ] },
        }
    }
}

/// What to list: the parsed and checked query string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListQuery {
    /// Normalised words every title must have a word starting with.
    pub words: Vec<String>,
    /// Price bounds, cents, inclusive.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub sort: Sort,
    /// At most this many tickets (1..=500).
    pub limit: i64,
    /// Start after this position (the next page).
    pub after: Option<Cursor>,
    /// `Some(user)`: that seller's own tickets in every state but withdrawn;
    /// `None`: the tickets for sale.
    pub seller: Option<String>,
}

impl ListQuery {
    /// The first page of the tickets for sale, newest first.
    pub fn for_sale(limit: i64) -> ListQuery {
        ListQuery {
            words: Vec::new(),
            min_price: None,
            max_price: None,
            sort: Sort::Newest,
            limit,
            after: None,
            seller: None,
        }
    }

    /// Whether this listing is read in windows: the tickets for sale are;
    /// a seller's own are few and read at once.
    pub fn windowed(&self) -> bool {
        self.seller.is_none()
    }

    /// The database filter of the whole listing (see the module docs for
    /// the index each uses).
    pub fn filter(&self) -> Document {
        self.filter_in(&Window::ALL)
    }

    /// The database filter of the part of the listing inside `window`: its
    /// first clause holds the equalities of the listing's index and the
    /// window's range on the sort axis; the other conditions follow it.
    pub fn filter_in(&self, window: &Window) -> Document {
        let mut first = match &self.seller {
            Some(seller) => doc! { "userId": seller, "withdrawn": Bson::Null },
            None => doc! { "orderId": Bson::Null, "withdrawn": Bson::Null },
        };
        let mut rest = Vec::new();
        if !self.words.is_empty() {
            let key = crate::search::index_key(&self.words);
            rest.extend(
                self.words
                    .iter()
                    .filter(|word| **word != key)
                    .map(|word| doc! { "prefixes": word }),
            );
            first.insert("prefixes", key);
        }
        let mut axis = self.range(window);
        let mut price = Document::new();
        if let Some(min) = self.min_price {
            price.insert("$gte", min);
        }
        if let Some(max) = self.max_price {
            // `<= max` as `< max + 1` (see `range`).
            price.insert("$lt", max.saturating_add(1));
        }
        if self.sort.on_price() {
            // One range on the price: the window's, and the filter's bound
            // on each side the window leaves open (a window never reaches
            // past the filter's bounds).
            for (op, value) in price {
                let side = if op == "$gte" {
                    ["$gt", "$gte"]
                } else {
                    ["$lt", "$lte"]
                };
                if !side.iter().any(|op| axis.contains_key(*op)) {
                    axis.insert(op, value);
                }
            }
        } else if !price.is_empty() {
            // Kept out of the first clause, whose one range is the id's.
            rest.push(doc! { "$and": [{ "price": price }] });
        }
        if !axis.is_empty() {
            first.insert(if self.sort.on_price() { "price" } else { "_id" }, axis);
        }
        // The cursor, where the window does not already start after it.
        if let Some(after) = &self.after
            && window.from.is_none_or(|(_, inside)| inside)
        {
            rest.push(after.filter());
        }
        if rest.is_empty() {
            first
        } else {
            rest.insert(0, first);
            doc! { "$and": rest }
        }
    }

    /// Where its first window starts on the sort axis: the cursor's
    /// position, else the top of the axis — the filter's bound on the
    /// price, or the newest ticket `newest` seen so far. `None` where the
    /// top is not known: the first window then reads to the end.
    fn anchor(&self, newest: Option<Position>) -> Option<Position> {
        match &self.after {
            Some(after) => Some(after.position()),
            None => match self.sort {
                Sort::Newest => newest,
                Sort::PriceAscending => Some(self.min_price.unwrap_or(0).into()),
                Sort::PriceDescending => self.max_price.map(Position::from),
            },
        }
    }

    /// How far apart on the sort axis two tickets lie.
    pub fn distance(&self, a: &Ticket, b: &Ticket) -> f64 {
        (self.position(a) - self.position(b)).unsigned_abs() as f64
    }

    /// Where `ticket` lies on the sort axis.
    pub fn position(&self, ticket: &Ticket) -> Position {
        if self.sort.on_price() {
            Position::from(ticket.price.cents())
        } else {
            id_position(ticket.id)
        }
    }

    /// The first window of this listing: ending where the same page ended
    /// the last time it was read (`end`: `Some(None)` when it reached the
    /// end of the listing), else `width` wide from the top — the newest
    /// ticket known being at `newest`.
    pub fn first_window(
        &self,
        width: f64,
        newest: Option<Position>,
        end: Option<Option<Position>>,
    ) -> Window {
        let from = match &self.after {
            // On the id, the cursor's position itself is outside the page;
            // on the price, tickets of the same price follow it.
            Some(after) => Some((after.position(), self.sort.on_price())),
            None => match self.sort {
                Sort::Newest => None,
                Sort::PriceAscending => self.min_price.map(|min| (min.into(), true)),
                Sort::PriceDescending => self.max_price.map(|max| (max.into(), true)),
            },
        };
        let to = match end {
            Some(end) => end,
            None => self
                .anchor(newest)
                .and_then(|top| self.window_end(top, width)),
        };
        Window { from, to }
    }

    /// The window after `window`, `width` wide; `None` after the last.
    ///
    /// On the id axis it reaches at least to the start of the second before
    /// `window`'s end: ids are dense within a second (a counter) and jump by
    /// 2^64 to the next, a gap that widths learnt within a second would need
    /// tens of windows to cross.
    pub fn next_window(&self, window: &Window, width: f64) -> Option<Window> {
        let start = window.to?;
        let mut to = self.window_end(start, width);
        if self.sort == Sort::Newest {
            let previous_second = ((start >> 64) - 1) << 64;
            to = to
                .map(|end| end.min(previous_second))
                .filter(|end| *end > 0);
        }
        Some(Window {
            from: Some((start, false)),
            to,
        })
    }

    /// `window`'s bounds, as the operators of the sort field.
    fn range(&self, window: &Window) -> Document {
        let on_price = self.sort.on_price();
        let value = |position: Position| -> Bson {
            if on_price {
                Bson::Int64(i64::try_from(position).unwrap_or(i64::MAX))
            } else {
                Bson::ObjectId(position_id(position))
            }
        };
        let (inside, outside, end) = if self.sort.descending() {
            ("$lte", "$lt", "$gte")
        } else {
            ("$gte", "$gt", "$lte")
        };
        // The far end first: a server that honours one bound per field of a
        // multikey index (SecantusDB, on the search indexes) honours that
        // one, and reads the window and what lies before it, not the rest
        // of the axis.
        let mut range = Document::new();
        let mut bound = |op: &str, position: Position| {
            // Prices are whole cents, so `<= p` is `< p + 1`. SecantusDB's
            // Python server drops the keys equal to a `$lte` bound on a field
            // that a compound index follows with another (`price`, then
            // `_id`): seen with pymongo, `{price: {$lte: 100}}` found none of
            // the tickets at 100 through `for_sale_by_price`.
            if on_price && op == "$lte" {
                range.insert("$lt", value(position.saturating_add(1)));
            } else {
                range.insert(op, value(position));
            }
        };
        if let Some(to) = window.to {
            bound(end, to);
        }
        if let Some((from, included)) = window.from {
            bound(if included { inside } else { outside }, from);
        }
        range
    }

    /// Where a window from `start` ends, `width` down the sort order;
    /// `None` when that is past the end of the axis or of the filter.
    fn window_end(&self, start: Position, width: f64) -> Option<Position> {
        let width = width.max(1.0) as Position;
        if self.sort.descending() {
            let end = start.checked_sub(width)?;
            let floor = match self.sort {
                Sort::PriceDescending => Position::from(self.min_price.unwrap_or(0)),
                _ => 0,
            };
            (end > floor).then_some(end)
        } else {
            let end = start.checked_add(width)?;
            let ceiling = self.max_price.map_or(Position::MAX, Position::from);
            (end < ceiling).then_some(end)
        }
    }
}

/// A place on a sort axis: an id as a 96-bit number, or a price in cents.
pub type Position = i128;

/// The ids' axis: the ObjectId's 12 bytes, big-endian.
fn id_position(id: ObjectId) -> Position {
    let mut wide = [0u8; 16];
    wide[4..].copy_from_slice(&id.bytes());
    Position::from_be_bytes(wide)
}

fn position_id(position: Position) -> ObjectId {
    let clamped = position.clamp(0, (1 << 96) - 1);
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&clamped.to_be_bytes()[4..]);
    ObjectId::from_bytes(bytes)
}

/// A stretch of the sort axis read with one query: from `from` (or the top
/// of the axis) down the sort order to `to` (or the end of the axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Where it starts and whether that position is inside it; `None`: the
    /// top of the axis.
    from: Option<(Position, bool)>,
    /// Where it ends, inside it; `None`: the end of the axis (the last
    /// window).
    to: Option<Position>,
}

impl Window {
    /// The whole axis: one read of the whole listing.
    pub const ALL: Window = Window {
        from: None,
        to: None,
    };

    /// This window, open to the end of the axis: the last.
    pub fn to_the_end(self) -> Window {
        Window { to: None, ..self }
    }
}

/// What the last pages taught about the axes: where each page recently
/// read ended (its last ticket), the newest ticket for sale seen, and per
/// kind of listing (sort order × searching or not) how wide a window
/// filled a page, for a page not read before.
///
/// A page read again — the first page above all, and a cursor followed by
/// many clients — starts with the window that filled it last time: exact
/// whatever the density of the axis (ids are dense within one second of
/// one process and jump by 2^64 between seconds, or between replicas). A
/// ticket listed since lands inside it; one sold since leaves it short,
/// and the next window makes up for it. A page that reached the end of the
/// listing (the last page, a search with few matches) is read to the end
/// at once next time.
#[derive(Debug)]
pub struct Spans {
    widths: [AtomicU64; 6],
    newest: Mutex<Option<Position>>,
    ends: Mutex<HashMap<ListQuery, Option<Position>>>,
}

/// How many page ends [`Spans`] remembers before it starts again.
const REMEMBERED_PAGES: usize = 1024;

impl Default for Spans {
    fn default() -> Self {
        Spans {
            widths: std::array::from_fn(|_| AtomicU64::new(0)),
            newest: Mutex::new(None),
            ends: Mutex::new(HashMap::new()),
        }
    }
}

impl Spans {
    fn slot(query: &ListQuery) -> usize {
        let sort = Sort::ALL.iter().position(|s| *s == query.sort).unwrap_or(0);
        sort * 2 + usize::from(!query.words.is_empty())
    }

    /// The first window of `query` (see [`ListQuery::first_window`]) and
    /// the width to grow from: the last that filled a page of its kind
    /// (else fifty dollars of prices, or a second of ids).
    pub fn first_window(&self, query: &ListQuery) -> (Window, f64) {
        let stored = f64::from_bits(self.widths[Self::slot(query)].load(Ordering::Relaxed));
        let width = if stored >= 1.0 {
            stored
        } else if query.sort.on_price() {
            5_000.0
        } else {
            2f64.powi(64)
        };
        let newest = *lock(&self.newest);
        let end = lock(&self.ends).get(query).copied();
        (query.first_window(width, newest, end), width)
    }

    /// A page of `query` was read: `tickets` holds the tickets it read (the
    /// page and the one after it), and filled it if there are more than the
    /// page holds.
    pub fn learn(&self, query: &ListQuery, tickets: &[Ticket]) {
        let mut ends = lock(&self.ends);
        if ends.len() >= REMEMBERED_PAGES {
            ends.clear();
        }
        let (Some(first), Some(last)) = (tickets.first(), tickets.last()) else {
            ends.insert(query.clone(), None);
            return;
        };
        if query.sort == Sort::Newest && query.after.is_none() {
            let top = query.position(first);
            let mut newest = lock(&self.newest);
            *newest = Some(newest.map_or(top, |known| known.max(top)));
        }
        if tickets.len() as i64 > query.limit {
            let width = 1.25 * query.distance(first, last) + 1.0;
            self.widths[Self::slot(query)].store(width.to_bits(), Ordering::Relaxed);
            ends.insert(query.clone(), Some(query.position(last)));
        } else {
            // The page reaches the end of the listing: next time, one read
            // to the end.
            ends.insert(query.clone(), None);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How much wider the next window is than one that yielded `found` tickets
/// while `missing` more are wanted: by the density seen, 2× to 8× (8× after
/// an empty one).
pub fn growth(found: usize, missing: usize) -> f64 {
    if found == 0 {
        8.0
    } else {
        (1.25 * missing as f64 / found as f64).clamp(2.0, 8.0)
    }
}

/// One page of tickets and where the next one starts, if there is one.
#[derive(Debug, Clone)]
pub struct Page {
    pub tickets: Vec<Ticket>,
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_nothing_else_does() {
        for sort in [Sort::Newest, Sort::PriceAscending, Sort::PriceDescending] {
            let cursor = Cursor {
                sort,
                price: 1250,
                id: ObjectId::new(),
            };
            assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
        for bad in [
            "",
            "abc",
            "bi5hYmM",
            "!!",
            &URL_SAFE_NO_PAD.encode("x.1.abc"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_window_is_a_closed_range_in_the_first_clause_far_end_first() {
        let query = ListQuery {
            words: vec!["radio".into(), "madi".into()],
            min_price: Some(1000),
            ..ListQuery::for_sale(100)
        };
        let top = id_position(ObjectId::parse_str("65a000000000000000000000").unwrap());
        let window = query.first_window(1000.0, Some(top), None);
        let filter = query.filter_in(&window);
        let clauses = filter.get_array("$and").unwrap();
        let first = clauses[0].as_document().unwrap();
        assert_eq!(first.get("orderId"), Some(&Bson::Null));
        assert_eq!(first.get_str("prefixes"), Ok("ma ra"));
        let range = first.get_document("_id").unwrap();
        assert_eq!(range.keys().collect::<Vec<_>>(), ["$gte"]);
        assert_eq!(
            range.get_object_id("$gte").unwrap(),
            position_id(top - 1000)
        );
        // The next window starts where this one ended, outside it, and
        // reaches the start of the second before.
        let next = query.next_window(&window, 4000.0).unwrap();
        let filter = query.filter_in(&next);
        let range = filter.get_array("$and").unwrap()[0]
            .as_document()
            .unwrap()
            .get_document("_id")
            .unwrap()
            .clone();
        assert_eq!(range.keys().collect::<Vec<_>>(), ["$gte", "$lt"]);
        assert_eq!(range.get_object_id("$lt").unwrap(), position_id(top - 1000));
        assert_eq!(
            range.get_object_id("$gte").unwrap(),
            position_id((((top - 1000) >> 64) - 1) << 64)
        );
        // The words and the price are later clauses.
        assert_eq!(clauses[1], Bson::Document(doc! { "prefixes": "radio" }));
        assert_eq!(clauses[2], Bson::Document(doc! { "prefixes": "madi" }));
        assert_eq!(
            clauses[3],
            Bson::Document(doc! { "$and": [{ "price": { "$gte": 1000_i64 } }] })
        );
    }

    #[test]
    fn by_price_the_window_and_the_filter_make_one_range() {
        let query = ListQuery {
            min_price: Some(2000),
            max_price: Some(3000),
            sort: Sort::PriceAscending,
            ..ListQuery::for_sale(100)
        };
        let window = query.first_window(500.0, None, None);
        assert_eq!(
            query.filter_in(&window),
            doc! { "orderId": Bson::Null, "withdrawn": Bson::Null,
            "price": { "$lt": 2501_i64, "$gte": 2000_i64 } }
        );
        // Past the filter's maximum the window is the last, bounded by it.
        let last = query.next_window(&window, 4000.0).unwrap();
        assert_eq!(query.next_window(&last, 1.0), None);
        assert_eq!(
            query.filter_in(&last),
            doc! { "orderId": Bson::Null, "withdrawn": Bson::Null,
            "price": { "$gt": 2500_i64, "$lt": 3001_i64 } }
        );
    }

    #[test]
    fn sort_values_round_trip() {
        for sort in [Sort::Newest, Sort::PriceAscending, Sort::PriceDescending] {
            assert_eq!(Sort::parse(sort.as_str()), Some(sort));
        }
        assert_eq!(Sort::parse("oldest"), None);
    }
}
