//! The image folders decode only a rank's shard of each global batch: it must be exactly the
//! slice of the global batch that the `ImageSource::train_shards` contract names, for 1-5
//! ranks and uneven dataset sizes, on real CIFAR-10 images.

use std::path::Path;

use fairnas_model::search_space::SearchSpace;
use fairnas_supernet::images::ImageFolder;
use fairnas_supernet::ImageSource;

#[test]
fn a_shard_is_its_slice_of_the_global_batch() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/cifar10-mini");
    let space = SearchSpace::nas_bench_macro();
    for limit in [37, 101] {
        let images = ImageFolder::open(&data, "train", Some(limit), &space).unwrap();
        let batch_size = 4;
        for shards in 1..=5 {
            let (seed, epoch, first) = (5, 2, 1);
            let global: Vec<_> =
                images.train_batches(seed, epoch, first, batch_size * shards).map(|b| b.unwrap()).collect();
            assert_eq!(global.len(), limit / (batch_size * shards) - first);
            for shard in 0..shards {
                let mine: Vec<_> = images
                    .train_shards(seed, epoch, first, batch_size, shard, shards)
                    .map(|b| b.unwrap())
                    .collect();
                assert_eq!(mine.len(), global.len(), "{limit} images, shard {shard} of {shards}");
                for (m, g) in mine.iter().zip(&global) {
                    let expected = g.slice(shard * batch_size..(shard + 1) * batch_size);
                    assert_eq!(m.index, g.index);
                    assert_eq!(m.labels, expected.labels, "{limit} images, shard {shard} of {shards}");
                    assert!(m.pixels == expected.pixels, "{limit} images, shard {shard} of {shards}: pixels");
                }
            }
        }
    }
}
