"""`keras-apm visualize`: islands, overfitting, interpolation, any resolution.

```shell
keras-apm visualize islands --preset P [--teacher T] --image skimage:coffee \
    --output islands.png [--method pca|tsne|kmeans]
keras-apm visualize overfit --teacher T [--preset P] --image skimage:astronaut \
    --steps 300 --every 60 --output overfit.png [--save-preset DIR]
keras-apm visualize interpolate --preset P --image A --image B --output interp.png
keras-apm visualize upsample --preset P --image A --factor 4 --output upsample.png
```
`--image` is a file or `skimage:NAME` (a photo bundled with scikit-image).
One module of this package per action, each with `add_arguments` and `run`.
"""

from keras_apm.cli.visualize import interpolate
from keras_apm.cli.visualize import islands
from keras_apm.cli.visualize import overfit
from keras_apm.cli.visualize import upsample

ACTIONS = {
    "islands": islands,
    "overfit": overfit,
    "interpolate": interpolate,
    "upsample": upsample,
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "visualize",
        help="Pictures of what an APM perceives (islands, overfit, ...).",
        description=(
            "Islands of agreement, islands over an overfitting run, "
            "interpolation between two images' trigger columns, and features "
            "finer than the patch grid. Needs the keras-apm[examples] extra."
        ),
    )
    actions = parser.add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    for name, module in ACTIONS.items():
        sub = actions.add_parser(
            name, help=module.HELP, description=module.__doc__
        )
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
