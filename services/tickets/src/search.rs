//! Title search without a text index: every prefix of every word, stored.
//!
//! SecantusDB's native server has no text indexes, and a regex over titles
//! reads the whole collection. Instead each ticket stores the normalised
//! prefixes of its title's words in `prefixes` (an array, so a multikey
//! index), and a search is an *equality* on that field for each query word:
//! `q=radio madi` is `{prefixes: {$all: ["radio", "madi"]}}`, and the index
//! `{prefixes: 1, …, _id: -1}` answers the first word in index order, so a
//! page of results still comes straight off an index with the listing's
//! keyset (an equality keeps the index's order for the fields after it; a
//! range per word, `{words: {$gte: "radio", $lt: "radip"}}`, would not, and
//! every match would be read and sorted to serve one page).
//!
//! Normalised means: Unicode compatibility decomposition, combining marks
//! (accents) dropped, lowercased, split on anything that is not a letter or
//! a digit. "Beyoncé — Zénith" has the words `beyonce`, `zenith`, and the
//! query `ZEN` finds it.
//!
//! The cost is bounded: a word contributes at most [`MAX_PREFIX_CHARS`]
//! prefixes (a longer query word is cut to that length too, so it still
//! finds the title), and a title at most [`MAX_TITLE_WORDS`] words.
//!
//! # Two words through one key
//!
//! One word's key can be common ("ra" for a fifth of the titles) while two
//! words together are rare, and the index answers one key: the other words
//! are checked on every ticket the key finds, so a page could read many
//! tickets to keep a few. `prefixes` therefore also holds, for every two
//! words of the title whose first two characters differ, a *pair key* of
//! those heads, sorted, joined by a space (which no word holds): "Radiohead
//! at Madison" stores `"ma ra"`, `"at ma"` and `"at ra"`. A query with two
//! words of different heads is answered by the pair key of its two longest
//! such words ([`index_key`]), and its words are then checked as before:
//! `radio madi` reads the tickets with a word starting "ra" and another
//! starting "ma", nearly only the matches. Two query words with different
//! heads always match different words of the title, so every match holds
//! the key. A title holds at most C([`MAX_TITLE_WORDS`], 2) pair keys, and
//! far fewer in practice (a title of 6 words, 15).

use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

/// The longest prefix stored (and the longest query word compared).
pub const MAX_PREFIX_CHARS: usize = 20;
/// Words of a title past this many are not searchable.
pub const MAX_TITLE_WORDS: usize = 32;
/// The most words a query may have.
pub const MAX_QUERY_WORDS: usize = 8;
/// The longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// The normalised words of `text`, in order, duplicates kept.
pub fn words(text: &str) -> Vec<String> {
    let folded: String = text
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(MAX_PREFIX_CHARS).collect())
        .collect()
}

/// What a ticket titled `title` stores in `prefixes`: every prefix of each
/// of its first [`MAX_TITLE_WORDS`] words, and the pair key of every two of
/// those words with different heads (see the module docs), each once,
/// sorted.
pub fn prefixes(title: &str) -> Vec<String> {
    let words: Vec<String> = words(title).into_iter().take(MAX_TITLE_WORDS).collect();
    let mut heads: Vec<&str> = words.iter().filter_map(|word| head(word)).collect();
    heads.sort_unstable();
    heads.dedup();
    let pairs = heads.iter().enumerate().flat_map(|(i, first)| {
        heads[i + 1..]
            .iter()
            .map(move |second| pair_key(first, second))
    });
    let mut all: Vec<String> = words
        .iter()
        .flat_map(|word| {
            word.char_indices()
                .map(|(i, c)| word[..i + c.len_utf8()].to_owned())
        })
        .chain(pairs)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A word's first two characters; `None` for a one-character word.
fn head(word: &str) -> Option<&str> {
    let (start, second) = word.char_indices().nth(1)?;
    Some(&word[..start + second.len_utf8()])
}

/// The pair key of two different heads, whatever their order.
fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

/// The one key of `prefixes` that the index is asked for, for a query of
/// `words` (longest first, as [`query_words`] gives them, not empty): the
/// pair key of the longest word and the longest one with another head,
/// else the longest word. Every title that matches all of `words` holds it.
pub fn index_key(words: &[String]) -> String {
    let longest = &words[0];
    let other = head(longest).and_then(|first| {
        words[1..]
            .iter()
            .filter_map(|word| head(word))
            .find(|second| *second != first)
            .map(|second| pair_key(first, second))
    });
    other.unwrap_or_else(|| longest.clone())
}

/// Why a query cannot be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("Search must be at most {MAX_QUERY_CHARS} characters")]
    TooLong,
    #[error("Search must have at most {MAX_QUERY_WORDS} words")]
    TooManyWords,
}

/// The words a ticket must have prefixes for to match `q`, each once,
/// longest first (the most selective, which the database may use for the
/// index); empty when `q` has no word at all.
pub fn query_words(q: &str) -> Result<Vec<String>, QueryError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let mut words = words(q);
    words.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    words.dedup();
    if words.len() > MAX_QUERY_WORDS {
        return Err(QueryError::TooManyWords);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_accents_and_splits_on_punctuation() {
        assert_eq!(
            words("Radiohead, Madison Square Garden"),
            ["radiohead", "madison", "square", "garden"]
        );
        assert_eq!(
            words("BEYONCÉ — Zénith de Paris (2026)"),
            ["beyonce", "zenith", "de", "paris", "2026"]
        );
        assert_eq!(
            words("Ｆｕｌｌｗｉｄｔｈ Ångström"),
            ["fullwidth", "angstrom"]
        );
        assert!(words(" ,;- ").is_empty());
    }

    #[test]
    fn stores_every_prefix_once() {
        assert_eq!(prefixes("Abba abc"), ["a", "ab", "abb", "abba", "abc"]);
        assert_eq!(prefixes("É"), ["e"]);
    }

    #[test]
    fn stores_a_pair_key_for_every_two_words_of_different_heads() {
        let keys = prefixes("Radiohead at Madison, Madrid X");
        let pairs: Vec<&String> = keys.iter().filter(|k| k.contains(' ')).collect();
        assert_eq!(pairs, ["at ma", "at ra", "ma ra"]);
    }

    #[test]
    fn a_query_is_answered_by_a_key_every_match_holds() {
        let key = |q: &str| index_key(&query_words(q).unwrap());
        assert_eq!(key("radio madi"), "ma ra");
        assert_eq!(key("madi RADIO"), "ma ra");
        // Same head: both may match one word, so no pair.
        assert_eq!(key("madison mad"), "madison");
        // A one-character word has no head.
        assert_eq!(key("radio m"), "radio");
        assert_eq!(key("zen"), "zen");
        for (title, q) in [
            ("Radiohead, Madison Square Garden", "radio madi"),
            ("Madison", "madison mad"),
            ("Beyoncé — Zénith de Paris (2026)", "paris 20 zen"),
        ] {
            assert!(prefixes(title).contains(&key(q)), "{title} / {q}");
        }
    }

    #[test]
    fn bounds_what_a_title_stores() {
        let long = "x".repeat(100);
        assert_eq!(prefixes(&long).len(), MAX_PREFIX_CHARS);
        let many: String = (0..100).map(|n| format!("w{n} ")).collect();
        assert!(prefixes(&many).len() <= MAX_TITLE_WORDS * 3);
    }

    #[test]
    fn a_long_query_word_still_finds_its_title() {
        let word = "a".repeat(40);
        let q = query_words(&word).unwrap();
        assert!(prefixes(&word).contains(&q[0]));
    }

    #[test]
    fn query_words_are_deduplicated_longest_first_and_bounded() {
        assert_eq!(query_words("madi RADIO madi").unwrap(), ["radio", "madi"]);
        assert!(query_words("  !! ").unwrap().is_empty());
        assert_eq!(
            query_words("a b c d e f g h i"),
            Err(QueryError::TooManyWords)
        );
        assert_eq!(query_words(&"a".repeat(201)), Err(QueryError::TooLong));
    }
}
