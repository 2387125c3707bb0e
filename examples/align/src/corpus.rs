//! A generated corpus of varied English sentences: what heads are fitted
//! and judged on when no corpus file is given.
//!
//! Sentences are drawn from frames (statements, questions, requests,
//! headlines, descriptions, comparisons) filled from word lists across many
//! topics, with a seeded generator: the same seed gives the same corpus on
//! every machine. Duplicates are dropped.

use std::collections::BTreeSet;

const PEOPLE: &[&str] = &[
    "my neighbour",
    "the teacher",
    "a young doctor",
    "the old fisherman",
    "our manager",
    "the scientist",
    "a tourist",
    "the children",
    "my grandmother",
    "the pilot",
    "a local farmer",
    "the mayor",
    "the programmer",
    "a street musician",
    "the nurse",
    "the students",
    "a famous chef",
    "the engineer",
    "her brother",
    "the committee",
];
const ACTIONS: &[&str] = &[
    "repaired",
    "painted",
    "sold",
    "found",
    "lost",
    "described",
    "photographed",
    "studied",
    "cleaned",
    "borrowed",
    "designed",
    "ignored",
    "carried",
    "delivered",
    "measured",
    "cooked",
    "tested",
    "wrote about",
    "argued about",
    "cancelled",
];
const THINGS: &[&str] = &[
    "the bicycle",
    "an old map",
    "the kitchen table",
    "a broken clock",
    "the garden fence",
    "a new bridge",
    "the report",
    "a bottle of wine",
    "the train schedule",
    "a red umbrella",
    "the software update",
    "a small boat",
    "the wedding cake",
    "an ancient coin",
    "the hospital budget",
    "a wooden chair",
    "the football match",
    "a jar of honey",
    "the election results",
    "a cup of coffee",
    "the mountain trail",
    "a database server",
];
const PLACES: &[&str] = &[
    "in the village",
    "at the station",
    "near the river",
    "in a crowded market",
    "on the beach",
    "at the airport",
    "in the laboratory",
    "behind the school",
    "in the city centre",
    "at the hospital",
    "on the farm",
    "in the office",
    "at the museum",
    "in the forest",
    "on the mountain",
    "in a small café",
];
const TIMES: &[&str] = &[
    "yesterday",
    "last winter",
    "this morning",
    "after lunch",
    "on Sunday",
    "every summer",
    "before dawn",
    "late at night",
    "two weeks ago",
    "during the storm",
    "in 1998",
    "next Tuesday",
];
const FEELINGS: &[&str] = &[
    "happy",
    "worried",
    "surprised",
    "tired",
    "angry",
    "curious",
    "proud",
    "confused",
    "relieved",
    "bored",
    "excited",
    "disappointed",
];
const TOPICS: &[&str] = &[
    "climate change",
    "interest rates",
    "the new vaccine",
    "quantum computing",
    "football transfers",
    "the housing market",
    "renewable energy",
    "ancient Rome",
    "machine learning",
    "public transport",
    "coffee prices",
    "space exploration",
    "the school holidays",
    "online privacy",
    "jazz music",
    "volcanic eruptions",
    "electric cars",
    "the local elections",
    "bird migration",
    "cyber security",
];
const ADJECTIVES: &[&str] = &[
    "expensive",
    "beautiful",
    "dangerous",
    "surprisingly quiet",
    "very old",
    "brand new",
    "difficult to find",
    "popular with visitors",
    "badly damaged",
    "easy to use",
    "much faster",
    "rather small",
    "completely empty",
    "full of people",
];
const VERBS: &[&str] = &[
    "rose",
    "fell",
    "doubled",
    "stayed the same",
    "improved",
    "collapsed",
    "recovered",
    "changed",
    "slowed down",
    "grew quickly",
];
const MEASURES: &[&str] = &[
    "prices",
    "temperatures",
    "sales",
    "ticket numbers",
    "water levels",
    "profits",
    "traffic",
    "unemployment",
    "exports",
    "visitor numbers",
];

/// A small deterministic generator (splitmix64).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

/// Capitalises the first letter.
fn sentence(text: String) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// `count` distinct sentences drawn with `seed`.
pub fn generate(count: usize, seed: u64) -> Vec<String> {
    let mut draw = Draw(seed);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    // Enough attempts to find `count` distinct sentences: the frames can
    // make millions.
    for _ in 0..count.saturating_mul(20) {
        if out.len() == count {
            break;
        }
        let d = &mut draw;
        let text = match d.next() % 10 {
            0 => format!(
                "{} {} {} {} {}.",
                d.pick(PEOPLE),
                d.pick(ACTIONS),
                d.pick(THINGS),
                d.pick(PLACES),
                d.pick(TIMES)
            ),
            1 => format!(
                "Why did {} {} {}?",
                d.pick(PEOPLE),
                d.pick(ACTIONS).split(' ').next().unwrap_or("see"),
                d.pick(THINGS)
            ),
            2 => format!(
                "Please bring {} to {} {}.",
                d.pick(THINGS),
                d.pick(PEOPLE),
                d.pick(PLACES)
            ),
            3 => format!(
                "{} {} after reports on {}.",
                d.pick(MEASURES),
                d.pick(VERBS),
                d.pick(TOPICS)
            ),
            4 => format!(
                "{} was {} when {} {} {}.",
                d.pick(PEOPLE),
                d.pick(FEELINGS),
                d.pick(PEOPLE),
                d.pick(ACTIONS),
                d.pick(THINGS)
            ),
            5 => format!(
                "{} {} is {}.",
                d.pick(THINGS),
                d.pick(PLACES),
                d.pick(ADJECTIVES)
            ),
            6 => format!("What do you think about {}?", d.pick(TOPICS)),
            7 => format!(
                "{} gave a talk on {} {}.",
                d.pick(PEOPLE),
                d.pick(TOPICS),
                d.pick(TIMES)
            ),
            8 => format!(
                "{} is {} than {}.",
                d.pick(THINGS),
                d.pick(ADJECTIVES),
                d.pick(THINGS)
            ),
            _ => format!(
                "{} never {} {} {}.",
                d.pick(PEOPLE),
                d.pick(ACTIONS),
                d.pick(THINGS),
                d.pick(TIMES)
            ),
        };
        let text = sentence(text);
        if seen.insert(text.clone()) {
            out.push(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_distinct_sentences() {
        let a = generate(3_000, 7);
        assert_eq!(a.len(), 3_000);
        assert_eq!(a, generate(3_000, 7));
        assert_ne!(a, generate(3_000, 8));
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 3_000);
        assert!(a.iter().all(|s| s.starts_with(char::is_uppercase)));
        // Every frame is used.
        assert!(a.iter().any(|s| s.ends_with('?')));
        assert!(a.iter().any(|s| s.starts_with("Please")));
    }
}
