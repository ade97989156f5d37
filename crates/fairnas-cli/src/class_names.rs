//! Class names compiled into the binary.

/// `wnid \t first name` per ImageNet class, in class-index order (derived from the standard
/// `synset_words.txt`).
const IMAGENET: &str = include_str!("../assets/imagenet_classes.tsv");

const CIFAR10: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The name of class `index` for a classifier with `classes` outputs.
pub fn class_name(classes: usize, index: usize) -> String {
    match classes {
        1000 => IMAGENET.lines().nth(index).and_then(|l| l.split('\t').nth(1)).unwrap_or("?").to_string(),
        10 => CIFAR10.get(index).copied().unwrap_or("?").to_string(),
        _ => format!("class {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_names_are_complete_and_ordered() {
        assert_eq!(IMAGENET.lines().count(), 1000);
        assert_eq!(class_name(1000, 0), "tench");
        assert_eq!(class_name(1000, 999), "toilet tissue");
        assert_eq!(class_name(10, 9), "truck");
    }
}
