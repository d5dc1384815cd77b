"""The shard format: everything that writes or reads a shard build, for the builder and the runtime alike.

    schema      the record contract (DESIGN.md section 4): keys, members, ``RecordMeta``, manifest checks
    errors      ``ShardError`` (a missing, empty or corrupt build or record) and ``LostSamples``
    writer      deterministic tar shards, written under a temporary name and renamed when complete
    location    where a build lives: a local folder or an s3:// gs:// https:// prefix from the user's config
    fetch       a remote shard fetched to local disk and checked (size, sha256) before it is read; the cache
    reader      a range of samples of one tar shard, and the count of what a range lost
    image_header  an image's size from its header, refused above the pixel limit before anything is decoded
    record      one raw sample -> ``Record`` (decoded image, mask, metadata)
    manifest    ``manifest.json``: made by the builder, read and checked by everyone else
    builds      one or several builds seen as one data set (``ShardSet``: merged class index, shard list)
    subset      a build restricted to some classes (one-for-one, sequential, continual training), copied
    atomic      whole-file writes no reader sees half of (manifest, journal, sidecars; the runtime's files too)

``shard_tools`` (the builder) and ``pipelines`` (the runtime) both import this package; it imports
neither of them, nor ``ccl``: only the standard library, numpy, OpenCV and (for remote builds) fsspec.

WebDataset is not a runtime dependency of the format: shards are WebDataset-compatible tars
(``<key>.<ext>`` members grouped by key), but they are written and read with the standard library's
``tarfile``. The writer needs byte-identical output (fixed member metadata, a patched prebuilt header
per member) and the reader must start and stop inside a shard (the data plan cuts at sample level),
open only what the user's config names (a ``pipe:`` URL would run a shell command from a manifest; a
remote shard is fetched by fsspec and checked against its manifest entry before a sample is used) and
refuse oversized members before reading them; webdataset's pipeline offers none of the three. Tests still
read builds with webdataset, as the independent check that the shards stay WebDataset tars, so it
belongs with the test dependencies only.
"""
