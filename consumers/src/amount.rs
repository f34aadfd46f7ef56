//! Money amounts as a payment speaker says them, in Chinese and in English.
//!
//! Amounts arrive as integer minor units (`amount_minor`, e.g. fen or cents)
//! with an ISO 4217 code; every supported currency (CNY, USD, EUR, HKD) has a
//! two-digit minor unit. Codes are matched ASCII case-insensitively.
//!
//! Choices that product may want to revisit, made once here:
//! - Chinese is spoken for CNY only (元/角/分). Saying foreign currencies in
//!   Chinese needs per-currency wording (美元/美分, 港元/毫…) nobody has
//!   agreed on yet, so they are refused rather than guessed.
//! - Chinese uses 二, never 两 ("二元", "二千"), as common speaker
//!   firmware does: one reading for a digit wherever it stands.
//! - Chinese drops the 一 of a leading 十 ("十元", "十万元") but keeps it after
//!   a 零 or a higher unit ("一万零一十元", "一百一十元"), as people read
//!   numbers aloud. No trailing 整.
//! - English uses American style: no "and" inside a number ("one thousand
//!   two hundred five"); "and" only joins the major and minor parts ("twelve
//!   yuan and fifty fen"). HKD is "dollars": a Hong Kong speaker serves a
//!   Hong Kong merchant, so "Hong Kong" would only lengthen every sentence.
//! - Negative amounts (refunds) are refused: a speaker announces receipts.

use thiserror::Error;

/// Why an amount cannot be spoken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AmountError {
    #[error("negative amount {0}: only received payments are announced")]
    Negative(i64),
    #[error("unsupported currency {0:?} (supported: CNY, USD, EUR, HKD)")]
    UnknownCurrency(String),
    #[error("{currency} amounts are not spoken in {language}")]
    NotSpokenIn {
        currency: &'static str,
        language: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Currency {
    Cny,
    Usd,
    Eur,
    Hkd,
}

/// English names: (major singular, major plural, minor singular, minor plural).
struct EnglishUnits {
    major: &'static str,
    majors: &'static str,
    minor: &'static str,
    minors: &'static str,
}

impl Currency {
    fn parse(code: &str) -> Result<Self, AmountError> {
        match code.to_ascii_uppercase().as_str() {
            "CNY" => Ok(Self::Cny),
            "USD" => Ok(Self::Usd),
            "EUR" => Ok(Self::Eur),
            "HKD" => Ok(Self::Hkd),
            _ => Err(AmountError::UnknownCurrency(code.to_string())),
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::Cny => "CNY",
            Self::Usd => "USD",
            Self::Eur => "EUR",
            Self::Hkd => "HKD",
        }
    }

    fn english(self) -> EnglishUnits {
        let (major, majors, minor, minors) = match self {
            // Yuan and fen do not inflect in English.
            Self::Cny => ("yuan", "yuan", "fen", "fen"),
            Self::Usd | Self::Hkd => ("dollar", "dollars", "cent", "cents"),
            Self::Eur => ("euro", "euros", "cent", "cents"),
        };
        EnglishUnits {
            major,
            majors,
            minor,
            minors,
        }
    }
}

/// Minor units per major unit; the same for every supported currency.
const MINOR_PER_MAJOR: u64 = 100;

fn non_negative(amount_minor: i64) -> Result<u64, AmountError> {
    u64::try_from(amount_minor).map_err(|_| AmountError::Negative(amount_minor))
}

/// The Chinese spoken form of a CNY amount, e.g. 1250 → "十二元五角".
pub fn chinese(amount_minor: i64, currency: &str) -> Result<String, AmountError> {
    let currency = Currency::parse(currency)?;
    if currency != Currency::Cny {
        return Err(AmountError::NotSpokenIn {
            currency: currency.code(),
            language: "Chinese",
        });
    }
    let minor = non_negative(amount_minor)?;
    let yuan = minor / MINOR_PER_MAJOR;
    let jiao = (minor / 10 % 10) as usize;
    let fen = (minor % 10) as usize;

    let mut out = String::new();
    if yuan > 0 {
        chinese_integer(yuan, true, &mut out);
        out.push('元');
    }
    if jiao > 0 {
        out.push_str(DIGITS[jiao]);
        out.push('角');
    }
    if fen > 0 {
        // "十二元零五分": the 零 stands for the missing 角, but only after 元.
        if jiao == 0 && yuan > 0 {
            out.push('零');
        }
        out.push_str(DIGITS[fen]);
        out.push('分');
    }
    if out.is_empty() {
        out.push_str("零元");
    }
    Ok(out)
}

const DIGITS: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];

/// Appends n > 0 in Chinese. `leading` is true when nothing is spoken before
/// n, which is the only place a 十 loses its 一.
fn chinese_integer(n: u64, leading: bool, out: &mut String) {
    const WAN: u64 = 10_000;
    const YI: u64 = 100_000_000;
    // Recursing on the part above 亿 also covers 万亿 (and beyond) for free.
    let (high, unit, rest, unit_size) = if n >= YI {
        (n / YI, '亿', n % YI, YI)
    } else if n >= WAN {
        (n / WAN, '万', n % WAN, WAN)
    } else {
        chinese_section(n, leading, out);
        return;
    };
    chinese_integer(high, leading, out);
    out.push(unit);
    if rest > 0 {
        // A gap right below the unit is read as one 零: 十万零五, 一亿零一万.
        if rest < unit_size / 10 {
            out.push('零');
        }
        chinese_integer(rest, false, out);
    }
}

/// Appends 1..=9999 with its own 千/百/十 and inner 零 (一千零五).
fn chinese_section(n: u64, leading: bool, out: &mut String) {
    const UNITS: [&str; 4] = ["千", "百", "十", ""];
    let digits = [n / 1000 % 10, n / 100 % 10, n / 10 % 10, n % 10];
    let mut started = false;
    let mut gap = false;
    for (position, &digit) in digits.iter().enumerate() {
        if digit == 0 {
            gap |= started;
            continue;
        }
        if gap {
            out.push('零');
            gap = false;
        }
        let bare_ten = position == 2 && digit == 1 && leading && !started;
        if !bare_ten {
            out.push_str(DIGITS[digit as usize]);
        }
        out.push_str(UNITS[position]);
        started = true;
    }
}

/// The English spoken form, e.g. USD 2105 → "twenty-one dollars and five cents".
pub fn english(amount_minor: i64, currency: &str) -> Result<String, AmountError> {
    let units = Currency::parse(currency)?.english();
    let minor = non_negative(amount_minor)?;
    let major_part = minor / MINOR_PER_MAJOR;
    let minor_part = minor % MINOR_PER_MAJOR;

    let major_words = |n: u64| {
        let unit = if n == 1 { units.major } else { units.majors };
        format!("{} {unit}", english_integer(n))
    };
    let minor_words = |n: u64| {
        let unit = if n == 1 { units.minor } else { units.minors };
        format!("{} {unit}", english_integer(n))
    };
    Ok(match (major_part, minor_part) {
        (0, 0) => major_words(0),
        (major, 0) => major_words(major),
        (0, minor) => minor_words(minor),
        (major, minor) => format!("{} and {}", major_words(major), minor_words(minor)),
    })
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// n in words, American style. i64::MAX minor units is about 92 quadrillion
/// major units, so the scales below cover every input.
fn english_integer(n: u64) -> String {
    const SCALES: [(u64, &str); 5] = [
        (1_000_000_000_000_000, "quadrillion"),
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    if n == 0 {
        return ONES[0].to_string();
    }
    let mut words: Vec<String> = Vec::new();
    let mut rest = n;
    for (scale, name) in SCALES {
        let group = rest / scale;
        if group > 0 {
            words.push(format!("{} {name}", english_below_thousand(group)));
            rest %= scale;
        }
    }
    if rest > 0 {
        words.push(english_below_thousand(rest));
    }
    words.join(" ")
}

/// 1..=999 in words ("two hundred five", "twenty-one").
fn english_below_thousand(n: u64) -> String {
    let hundreds = (n / 100) as usize;
    let below_hundred = (n % 100) as usize;
    let mut words = Vec::new();
    if hundreds > 0 {
        words.push(format!("{} hundred", ONES[hundreds]));
    }
    match below_hundred {
        0 => {}
        1..=19 => words.push(ONES[below_hundred].to_string()),
        _ => {
            let (tens, ones) = (below_hundred / 10, below_hundred % 10);
            words.push(if ones == 0 {
                TENS[tens].to_string()
            } else {
                format!("{}-{}", TENS[tens], ONES[ones])
            });
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zh(minor: i64) -> String {
        chinese(minor, "CNY").expect("CNY amount")
    }

    #[test]
    fn chinese_yuan_jiao_fen() {
        assert_eq!(zh(1250), "十二元五角");
        assert_eq!(zh(1205), "十二元零五分");
        assert_eq!(zh(1255), "十二元五角五分");
        assert_eq!(zh(5), "五分");
        assert_eq!(zh(50), "五角");
        assert_eq!(zh(55), "五角五分");
        assert_eq!(zh(0), "零元");
        assert_eq!(zh(200), "二元");
        assert_eq!(zh(1), "一分");
    }

    #[test]
    fn chinese_integers() {
        let yuan = |n: i64| zh(n * 100);
        assert_eq!(yuan(10), "十元");
        assert_eq!(yuan(15), "十五元");
        assert_eq!(yuan(20), "二十元");
        assert_eq!(yuan(100), "一百元");
        assert_eq!(yuan(110), "一百一十元");
        assert_eq!(yuan(101), "一百零一元");
        assert_eq!(yuan(2000), "二千元");
        assert_eq!(yuan(1005), "一千零五元");
        assert_eq!(yuan(1050), "一千零五十元");
        assert_eq!(yuan(1010), "一千零一十元");
        assert_eq!(yuan(10_000), "一万元");
        assert_eq!(yuan(10_010), "一万零一十元");
        assert_eq!(yuan(10_100), "一万零一百元");
        assert_eq!(yuan(11_000), "一万一千元");
        assert_eq!(yuan(100_005), "十万零五元");
        assert_eq!(yuan(1_000_000), "一百万元");
        assert_eq!(yuan(1_100_000), "一百一十万元");
        assert_eq!(yuan(100_000_000), "一亿元");
        assert_eq!(yuan(100_000_005), "一亿零五元");
        assert_eq!(yuan(100_010_000), "一亿零一万元");
        assert_eq!(yuan(100_100_000), "一亿零一十万元");
        assert_eq!(yuan(110_000_000), "一亿一千万元");
        assert_eq!(yuan(1_000_000_000), "十亿元");
        assert_eq!(yuan(1_000_000_000_000), "一万亿元");
        assert_eq!(
            yuan(1_234_567_890_012),
            "一万二千三百四十五亿六千七百八十九万零一十二元"
        );
    }

    #[test]
    fn chinese_with_cents() {
        assert_eq!(zh(100_530), "一千零五元三角");
        assert_eq!(zh(10_000_001), "十万元零一分");
    }

    #[test]
    fn chinese_extremes_do_not_overflow() {
        // 92,233,720,368,547,758.07 yuan: the part above 亿 has its own 亿.
        assert_eq!(
            zh(i64::MAX),
            "九亿二千二百三十三万七千二百零三亿六千八百五十四万七千七百五十八元零七分"
        );
    }

    #[test]
    fn chinese_refusals() {
        assert_eq!(chinese(-1, "CNY"), Err(AmountError::Negative(-1)));
        assert_eq!(
            chinese(100, "USD"),
            Err(AmountError::NotSpokenIn {
                currency: "USD",
                language: "Chinese"
            })
        );
        assert_eq!(
            chinese(100, "JPY"),
            Err(AmountError::UnknownCurrency("JPY".into()))
        );
        assert_eq!(zh(100), chinese(100, "cny").expect("lowercase code"));
    }

    #[test]
    fn english_currencies() {
        let en = |minor: i64, currency: &str| english(minor, currency).expect("amount");
        assert_eq!(en(1250, "CNY"), "twelve yuan and fifty fen");
        assert_eq!(en(100, "CNY"), "one yuan");
        assert_eq!(en(1, "CNY"), "one fen");
        assert_eq!(en(2105, "USD"), "twenty-one dollars and five cents");
        assert_eq!(en(100, "USD"), "one dollar");
        assert_eq!(en(101, "USD"), "one dollar and one cent");
        assert_eq!(en(0, "USD"), "zero dollars");
        assert_eq!(en(100, "EUR"), "one euro");
        assert_eq!(en(250, "EUR"), "two euros and fifty cents");
        assert_eq!(en(1, "EUR"), "one cent");
        assert_eq!(en(1999, "HKD"), "nineteen dollars and ninety-nine cents");
    }

    #[test]
    fn english_integers() {
        assert_eq!(english_integer(0), "zero");
        assert_eq!(english_integer(40), "forty");
        assert_eq!(english_integer(99), "ninety-nine");
        assert_eq!(english_integer(100), "one hundred");
        assert_eq!(english_integer(1205), "one thousand two hundred five");
        assert_eq!(english_integer(1_000_001), "one million one");
        assert_eq!(
            english_integer(999_999_999_999),
            "nine hundred ninety-nine billion nine hundred ninety-nine million \
             nine hundred ninety-nine thousand nine hundred ninety-nine"
        );
        assert_eq!(english_integer(2_000_000_000_000), "two trillion");
        let max = english(i64::MAX, "USD").expect("max amount");
        assert!(max.starts_with("ninety-two quadrillion"), "{max}");
        assert!(max.ends_with("and seven cents"), "{max}");
    }

    #[test]
    fn english_refusals() {
        assert_eq!(english(-5, "USD"), Err(AmountError::Negative(-5)));
        assert_eq!(english(5, ""), Err(AmountError::UnknownCurrency("".into())));
    }
}
