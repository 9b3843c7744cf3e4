# Stage 2: decode every image once into the dataset's HDF5 image cache.


rule image_cache:
    input:
        table=cache_table,
    output:
        f"{RESULTS}/{{dataset}}/images/{{subset}}.h5",
    log:
        "logs/image_cache/{dataset}/{subset}.log",
    conda:
        "../../envs/medret.yaml"
    threads: 4  # decoding threads; Snakemake gives fewer on a smaller machine
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        size=dataset_image_size,
        fast=dataset_fast_decode,
    script:
        "../scripts/image_cache.py"
