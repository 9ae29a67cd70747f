"""A teacher-feature cache: run the teacher once, distil many epochs from disk.

`cache_teacher_features` runs a frozen teacher over a `tf.data` dataset of
images and writes the images with their targets to `directory` in shards
(`shard_00000.bin`, ...). `load_feature_cache` reads them back as a
`tf.data.Dataset` of dicts that `APMDistiller.fit` trains on without a
teacher (the official recipe: dump the teacher's features once).

Layout (format version 2). A shard file holds `n` consecutive examples as
raw little-endian columns, one section per key in `manifest["keys"]` order
(`images`, the `cached_targets()` the teacher has, `labels`), each section
`n` fixed-size records padded to a multiple of 4 KiB: any run of examples
of a key is one contiguous byte range, read with one `os.preadv` straight
into a batch's tensor; NumPy can `np.memmap` the same bytes. (Format
version 1, `.npz` shards, is refused with a message saying how to rebuild.)

Trust. `manifest.json` records each shard's example count, byte size and
checksum, the teacher (class, geometry, preprocessing, a hash of its
weights), the dataset (a hash of its first image) and the layout, so a
cache is never continued or read with another teacher. Every path the
manifest names must stay inside the cache directory (`read_manifest`
refuses the manifest otherwise). Data is verified before first use: the
writer checks every written shard on each call and rewrites damaged ones;
the reader checks a shard's checksum before the first batch from it.

Modules: `manifest` (what a cache holds, checked), `checksums` (hashing
and verification), `sources` (the dataset's images and the teacher's
targets), `writer` (`cache_teacher_features`), `reader`
(`load_feature_cache`).
"""

from keras_apm.data.feature_cache.manifest import FORMAT_VERSION
from keras_apm.data.feature_cache.manifest import MANIFEST_FILE
from keras_apm.data.feature_cache.manifest import read_manifest
from keras_apm.data.feature_cache.manifest import teacher_identity
from keras_apm.data.feature_cache.reader import load_feature_cache
from keras_apm.data.feature_cache.writer import IMAGE_DTYPES
from keras_apm.data.feature_cache.writer import TARGET_DTYPES
from keras_apm.data.feature_cache.writer import cache_teacher_features
