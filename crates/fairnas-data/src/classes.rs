//! The class lists the datasets are labelled with: the 1000 ImageNet classes (wnid and first
//! name, in the standard index order = sorted wnids) and the 10 CIFAR-10 classes.

/// `wnid \t first name` per ImageNet class, in class-index order (derived from the standard
/// `synset_words.txt`).
const IMAGENET: &str = include_str!("../assets/imagenet_classes.tsv");

/// CIFAR-10 class names in label order (also the alphabetical order of the JPEG tree's folders).
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

fn imagenet_rows() -> impl Iterator<Item = (&'static str, &'static str)> {
    IMAGENET.lines().map(|l| l.split_once('\t').unwrap_or((l, "?")))
}

/// The ImageNet wnids in class-index order.
pub fn imagenet_wnids() -> Vec<&'static str> {
    imagenet_rows().map(|(wnid, _)| wnid).collect()
}

/// The class index of an ImageNet wnid (`n01440764` -> 0).
pub fn imagenet_index(wnid: &str) -> Option<usize> {
    imagenet_rows().position(|(w, _)| w == wnid)
}

/// Whether `name` has the shape of a WordNet id (`n` + 8 digits).
pub fn looks_like_wnid(name: &str) -> bool {
    name.len() == 9 && name.starts_with('n') && name[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The human name of class `index` for a classifier with `classes` outputs.
pub fn class_name(classes: usize, index: usize) -> String {
    match classes {
        1000 => imagenet_rows().nth(index).map(|(_, name)| name).unwrap_or("?").to_string(),
        10 => CIFAR10_CLASSES.get(index).copied().unwrap_or("?").to_string(),
        _ => format!("class {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_list_is_complete_sorted_and_named() {
        let wnids = imagenet_wnids();
        assert_eq!(wnids.len(), 1000);
        assert!(wnids.windows(2).all(|w| w[0] < w[1]), "wnids are in sorted order");
        assert!(wnids.iter().all(|w| looks_like_wnid(w)));
        assert_eq!(imagenet_index("n01440764"), Some(0));
        assert_eq!(imagenet_index("n15075141"), Some(999));
        assert_eq!(class_name(1000, 0), "tench");
        assert_eq!(class_name(1000, 999), "toilet tissue");
        assert_eq!(class_name(10, 9), "truck");
        assert!(!looks_like_wnid("n0144076") && !looks_like_wnid("x01440764"));
    }
}
