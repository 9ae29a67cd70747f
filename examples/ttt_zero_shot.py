"""CLIP zero-shot test-time training on a folder of your own images.

For every image in `--folder` a fresh APM student regresses the CLIP
teacher's image embedding for a few steps, and is then classified against
the CLIP text embeddings of "a photo of a {class}" (the official APM
prompt; pass more `--templates` to average several). The teacher's own
zero-shot prediction is printed next to the student's.

The folder holds images directly (then give `--classes`), or one subfolder
per class (the subfolder names are the classes and the accuracy is shown).

```shell
python examples/ttt_zero_shot.py --folder my_photos --classes cat dog car
python examples/ttt_zero_shot.py --preset clip_vit_base_patch16 \
    --folder my_labelled_photos --steps 20 --output result.json
```

CLIP presets download from model hubs on first use; a local preset
directory (a `CLIPBackbone` saved with its `CLIPTokenizer`) works offline.
"""

import argparse
import os

import numpy as np

from keras_apm.data import image_dataset
from keras_apm.data import list_image_files
from keras_apm.teachers import Teacher
from keras_apm.ttt import TestTimeTrainer
from keras_apm.ttt import classifier_for_teacher
from keras_apm.utils.files import write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default="clip_vit_large_patch14", help="CLIP preset"
    )
    parser.add_argument("--folder", required=True, help="folder of images")
    parser.add_argument("--classes", nargs="+", default=None, help="class names")
    parser.add_argument("--templates", nargs="+", default=None, help="prompts with {}")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=None, help="optional JSON of predictions")
    args = parser.parse_args(argv)

    paths, labels, folder_classes = list_image_files(args.folder)
    classes = args.classes or folder_classes
    if not classes:
        raise SystemExit("Give --classes, or sort the images into class subfolders.")
    if args.classes and labels is not None and list(args.classes) != folder_classes:
        raise SystemExit(f"--classes must match the subfolders {folder_classes}.")

    teacher = Teacher.from_preset(args.preset)
    classifier = classifier_for_teacher(
        teacher, class_names=classes, templates=args.templates, preset=args.preset
    )
    trainer = TestTimeTrainer(
        teacher=teacher,
        classifier=classifier,
        steps=args.steps,
        batch_size=args.batch_size,
    )
    images = image_dataset(args.folder, image_size=teacher.image_size, batch_size=64)
    result = trainer.adapt(np.concatenate([np.asarray(x) for x in images]))

    rows = []
    for i, path in enumerate(paths):
        row = {
            "file": os.path.relpath(path, args.folder),
            "teacher": classes[result["teacher_predictions"][i]],
            "apm": classes[result["predictions"][i]],
        }
        rows.append(row)
        print(f"{row['file']:40s} CLIP: {row['teacher']:15s} APM-TTT: {row['apm']}")
    agreement = float(np.mean(result["predictions"] == result["teacher_predictions"]))
    print(f"agreement {agreement:.3f}, {result['seconds'] / len(paths):.3f} s/image")
    if labels is not None:
        for name, key in (("CLIP", "teacher_predictions"), ("APM-TTT", "predictions")):
            print(f"{name} accuracy {np.mean(result[key] == labels):.3f}")
    if args.output:
        write_json(
            args.output,
            {"classes": classes, "agreement": agreement, "images": rows},
            indent=1,
        )
        print(f"Wrote {args.output}.")


if __name__ == "__main__":
    main()
